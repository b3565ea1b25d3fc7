//! Readable input formats, so that seed files are plain text a person can write and read.
#![allow(dead_code)]

/// An answer written like an HTTP/1 response: a first line of words, `name: value` header
/// lines, an empty line, then the body (any bytes).
pub struct Written {
    pub first_line: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn http_like(data: &[u8]) -> Written {
    let (head, body) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], data[at + 2..].to_vec()),
        None => (data, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let first_line = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let headers = lines
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match line.split_once(':') {
                Some((name, value)) => (
                    name.trim().to_ascii_lowercase(),
                    value.trim_start_matches([' ', '\t']).to_owned(),
                ),
                None => (line.trim().to_ascii_lowercase(), String::new()),
            }
        })
        .collect();
    Written {
        first_line,
        headers,
        body,
    }
}

/// `NAME=value` lines (a value runs to the end of its line; `\n` in it stands for a newline).
pub fn key_values(data: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(data)
        .split('\n')
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            Some((name.to_owned(), value.replace("\\n", "\n")))
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
