//! The world the stand-in serves: a tree of groups and the projects they own or have shared with them.
//!
//! A [`Seed`] is immutable once built. It is built only by [`Seed::demo`] (a small hand-written world
//! for the demo and end-to-end tests) or [`Seed::generated`] (a big deterministic world for scale
//! tests), and adjusted by [`Seed::with_statistics`] before the stand-in starts. The accessors
//! answer the questions tests ask ("which projects does this group own?") and the ones the server
//! needs to resolve `:id` path parameters.

use std::collections::HashSet;

/// First id handed out to a group; group ids count up from here.
const FIRST_GROUP_ID: u64 = 1;
/// First id handed out to a project; kept apart from group ids so the two are never confused in tests.
const FIRST_PROJECT_ID: u64 = 1001;

/// A group (GitLab namespace of kind `group`); a subgroup when `parent_id` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: u64,
    /// Human name, e.g. `Acme Platform`.
    pub name: String,
    /// Last path segment, e.g. `platform`.
    pub path: String,
    /// Slash-separated path from the top-level group, e.g. `acme/platform`.
    pub full_path: String,
    /// Names from the top-level group down, joined by ` / `.
    pub full_name: String,
    pub parent_id: Option<u64>,
    /// Synthetic ISO 8601 creation time, increasing with the id.
    pub created_at: String,
}

/// A project, owned by exactly one group and possibly shared with others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    pub name: String,
    pub path: String,
    /// `<owning group's full_path>/<path>`.
    pub path_with_namespace: String,
    /// `<owning group's full_name> / <name>`.
    pub name_with_namespace: String,
    pub description: String,
    /// Id of the owning group (the project's namespace).
    pub group_id: u64,
    pub archived: bool,
    /// Groups (other than the owner) the project is shared with.
    pub shared_with: Vec<u64>,
    /// Synthetic ISO 8601 creation time, increasing with the id.
    pub created_at: String,
    /// GitLab's `last_activity_at`: in the seed, the project's `created_at`; the stand-in's state
    /// moves it when an event happens in the project ([`ProjectChange::Activity`](super::ProjectChange::Activity)).
    pub last_activity_at: String,
    /// What the project holds, as `GET /projects/:id?statistics=true` reports it.
    pub statistics: Statistics,
}

/// A project's statistics, in bytes but for the commit count (GitLab's
/// `API::Entities::ProjectStatistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    pub commit_count: u64,
    pub repository_size: u64,
    pub wiki_size: u64,
    pub lfs_objects_size: u64,
    /// GitLab's `build_artifacts_size`, shown as `job_artifacts_size`.
    pub job_artifacts_size: u64,
    pub pipeline_artifacts_size: u64,
    pub packages_size: u64,
    pub snippets_size: u64,
    pub uploads_size: u64,
    pub container_registry_size: u64,
}

impl Statistics {
    /// Small, varied and deterministic sizes for the project with this id.
    fn seeded(id: u64) -> Statistics {
        const KIB: u64 = 1024;
        Statistics {
            commit_count: 1 + id % 89,
            repository_size: 256 * KIB + (id % 61) * 16 * KIB,
            wiki_size: if id.is_multiple_of(2) { 12 * KIB } else { 0 },
            lfs_objects_size: if id.is_multiple_of(5) {
                3 * 1024 * KIB
            } else {
                0
            },
            job_artifacts_size: (id % 7) * 64 * KIB,
            pipeline_artifacts_size: 0,
            packages_size: 0,
            snippets_size: 0,
            uploads_size: (id % 3) * 8 * KIB,
            container_registry_size: 0,
        }
    }

    /// `storage_size`: the sum GitLab keeps of the components it counts
    /// (`ProjectStatistics::STORAGE_SIZE_COMPONENTS`: repository, wiki, LFS objects, job
    /// artifacts, packages, snippets and uploads).
    pub fn storage_size(&self) -> u64 {
        [
            self.repository_size,
            self.wiki_size,
            self.lfs_objects_size,
            self.job_artifacts_size,
            self.packages_size,
            self.snippets_size,
            self.uploads_size,
        ]
        .iter()
        .fold(0, |sum, size| sum.saturating_add(*size))
    }
}

/// The top-level groups of [`Seed::demo`] that the demo and the end-to-end tests back up; the demo
/// world's fourth top-level group, `contractors`, is left out on purpose (its projects are shared
/// into these groups and must not be backed up).
pub const DEMO_GROUPS: [&str; 3] = ["acme", "globex", "initech"];

/// Groups and projects, in id order.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    groups: Vec<Group>,
    projects: Vec<Project>,
}

impl Seed {
    /// The demo/test world: the three top-level groups the demo backs up ([`DEMO_GROUPS`]: `acme`,
    /// `globex`, `initech`), each with a subgroup (`acme/platform/infra` is nested two deep), owning
    /// 21 projects of which 4 are archived; and a fourth top-level group, `contractors`, that is never
    /// backed up and owns 2 projects. 5 projects are shared into groups they do not belong to:
    /// `initech/intranet` → `acme`, `globex/research/ml-pipeline` → `initech`,
    /// `acme/docs` → `globex/research`, `contractors/brand-refresh` → `acme` and
    /// `contractors/lab-tools` → `globex/research`. `contractors` and its projects take the last
    /// ids. Deterministic.
    pub fn demo() -> Seed {
        let mut seed = Seed::default();
        let acme = seed.add_group(None, "acme", "Acme");
        let platform = seed.add_group(Some(acme), "platform", "Platform");
        let infra = seed.add_group(Some(platform), "infra", "Infra");
        let globex = seed.add_group(None, "globex", "Globex");
        let research = seed.add_group(Some(globex), "research", "Research");
        let initech = seed.add_group(None, "initech", "Initech");
        let ops = seed.add_group(Some(initech), "ops", "Ops");
        let contractors = seed.add_group(None, "contractors", "Contractors");

        let owned: [(usize, &[&str]); 8] = [
            (acme, &["website", "api", "docs", "legacy-portal"]),
            (platform, &["auth-service", "billing", "gateway"]),
            (infra, &["terraform", "k8s-manifests", "old-ansible"]),
            (globex, &["hardware-sim", "firmware", "marketing-site"]),
            (research, &["ml-pipeline", "datasets", "notebooks"]),
            (initech, &["tps-reports", "intranet", "printer-drivers"]),
            (ops, &["monitoring", "runbooks"]),
            (contractors, &["brand-refresh", "lab-tools"]),
        ];
        for (group, paths) in owned {
            for path in paths {
                seed.add_project(group, path, &format!("Demo project {path}"), false);
            }
        }
        let archived = [
            "acme/legacy-portal",
            "acme/platform/infra/old-ansible",
            "globex/research/datasets",
            "initech/printer-drivers",
        ];
        for project in &mut seed.projects {
            project.archived = archived.contains(&project.path_with_namespace.as_str());
        }
        for (project_path, group_path) in [
            ("initech/intranet", "acme"),
            ("globex/research/ml-pipeline", "initech"),
            ("acme/docs", "globex/research"),
            ("contractors/brand-refresh", "acme"),
            ("contractors/lab-tools", "globex/research"),
        ] {
            seed.share(project_path, group_path);
        }
        seed
    }

    /// A big generated world for scale tests: `groups` top-level groups `team-<g>`, each with one
    /// subgroup `team-<g>/sub-0`, and `projects_per_group` own projects `project-<i>` per top-level
    /// group, alternating between the group (even `i`) and its subgroup (odd `i`). Every tenth project
    /// (`i % 10 == 9`) is archived; nothing is shared. Deterministic, and cheap enough to build 10,000+
    /// projects in milliseconds.
    pub fn generated(groups: usize, projects_per_group: usize) -> Seed {
        let mut seed = Seed {
            groups: Vec::with_capacity(groups * 2),
            projects: Vec::with_capacity(groups * projects_per_group),
        };
        for g in 0..groups {
            let team = seed.add_group(None, &format!("team-{g}"), &format!("Team {g}"));
            let sub = seed.add_group(Some(team), "sub-0", "Sub 0");
            for i in 0..projects_per_group {
                let owner = if i % 2 == 0 { team } else { sub };
                let path = format!("project-{i}");
                seed.add_project(owner, &path, "", i % 10 == 9);
            }
        }
        seed
    }

    /// The same world, but the project with this id reports `statistics` (a project too large
    /// for one S3 PUT, say). Unknown ids change nothing.
    pub fn with_statistics(mut self, id: u64, statistics: Statistics) -> Seed {
        if let Some(project) = self.projects.iter_mut().find(|project| project.id == id) {
            project.statistics = statistics;
        }
        self
    }

    /// All groups, top-level and subgroups, in id order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// All projects, in id order.
    pub fn projects(&self) -> &[Project] {
        &self.projects
    }

    /// Top-level groups (no parent), in id order.
    pub fn top_level_groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|group| group.parent_id.is_none())
    }

    pub fn group(&self, id: u64) -> Option<&Group> {
        self.groups.iter().find(|group| group.id == id)
    }

    /// The group with this full path; case-insensitive, like GitLab.
    pub fn group_by_path(&self, full_path: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|group| group.full_path.eq_ignore_ascii_case(full_path))
    }

    pub fn project(&self, id: u64) -> Option<&Project> {
        self.projects.iter().find(|project| project.id == id)
    }

    /// The project with this `path_with_namespace`; case-insensitive, like GitLab.
    pub fn project_by_path(&self, path_with_namespace: &str) -> Option<&Project> {
        self.projects.iter().find(|project| {
            project
                .path_with_namespace
                .eq_ignore_ascii_case(path_with_namespace)
        })
    }

    /// Resolves a GitLab `:id` path parameter of the groups API: a numeric id or a full path.
    pub fn find_group(&self, id_or_path: &str) -> Option<&Group> {
        match id_or_path.parse() {
            Ok(id) => self.group(id),
            Err(_) => self.group_by_path(id_or_path),
        }
    }

    /// Resolves a GitLab `:id` path parameter of the projects API: a numeric id or a path with namespace.
    pub fn find_project(&self, id_or_path: &str) -> Option<&Project> {
        match id_or_path.parse() {
            Ok(id) => self.project(id),
            Err(_) => self.project_by_path(id_or_path),
        }
    }

    /// Projects owned by the group with this full path or by any of its subgroups (not the ones merely
    /// shared with it), in id order. Empty for an unknown path.
    pub fn own_projects(&self, group_full_path: &str) -> Vec<&Project> {
        match self.group_by_path(group_full_path) {
            Some(group) => self.projects_owned_by(group.id, true).collect(),
            None => Vec::new(),
        }
    }

    /// Projects owned by group `group_id`, and with `include_subgroups` also those owned by its
    /// descendants, in id order.
    pub fn projects_owned_by(
        &self,
        group_id: u64,
        include_subgroups: bool,
    ) -> impl Iterator<Item = &Project> {
        let owners = self.owners(group_id, include_subgroups);
        self.projects
            .iter()
            .filter(move |project| owners.contains(&project.group_id))
    }

    /// Projects shared with group `group_id` itself (not with its subgroups), in id order.
    pub fn projects_shared_with(&self, group_id: u64) -> impl Iterator<Item = &Project> {
        self.projects
            .iter()
            .filter(move |project| project.shared_with.contains(&group_id))
    }

    /// The first id free for a project created after the seed was built (by an import).
    pub fn next_project_id(&self) -> u64 {
        FIRST_PROJECT_ID + self.projects.len() as u64
    }

    /// A project that is not part of the seed (one created by an import), owned by `group`, with
    /// this id, path and name, described like the seed's own.
    pub fn new_project(group: &Group, id: u64, path: &str, name: &str) -> Project {
        Project {
            id,
            name: name.to_owned(),
            path: path.to_owned(),
            path_with_namespace: format!("{}/{path}", group.full_path),
            name_with_namespace: format!("{} / {name}", group.full_name),
            description: String::new(),
            group_id: group.id,
            archived: false,
            shared_with: Vec::new(),
            created_at: synthetic_timestamp(id),
            last_activity_at: synthetic_timestamp(id),
            statistics: Statistics::seeded(id),
        }
    }

    /// The group and, with `include_subgroups`, every group below it: the owners whose projects
    /// a group lists.
    pub fn owners(&self, group_id: u64, include_subgroups: bool) -> HashSet<u64> {
        if include_subgroups {
            self.self_and_descendants(group_id)
        } else {
            HashSet::from([group_id])
        }
    }

    /// The group and every group below it.
    fn self_and_descendants(&self, group_id: u64) -> HashSet<u64> {
        let mut found = HashSet::from([group_id]);
        // Parents always precede their children in `groups`, so one pass in id order is enough.
        for group in &self.groups {
            if group
                .parent_id
                .is_some_and(|parent| found.contains(&parent))
            {
                found.insert(group.id);
            }
        }
        found
    }

    /// Appends a group under the group at index `parent` and returns the new group's index.
    fn add_group(&mut self, parent: Option<usize>, path: &str, name: &str) -> usize {
        let id = FIRST_GROUP_ID + self.groups.len() as u64;
        let parent = parent.map(|index| &self.groups[index]);
        let group = Group {
            id,
            name: name.to_owned(),
            path: path.to_owned(),
            full_path: match parent {
                Some(parent) => format!("{}/{path}", parent.full_path),
                None => path.to_owned(),
            },
            full_name: match parent {
                Some(parent) => format!("{} / {name}", parent.full_name),
                None => name.to_owned(),
            },
            parent_id: parent.map(|parent| parent.id),
            created_at: synthetic_timestamp(id),
        };
        self.groups.push(group);
        self.groups.len() - 1
    }

    /// Appends a project owned by the group at index `owner`.
    fn add_project(&mut self, owner: usize, path: &str, description: &str, archived: bool) {
        let id = FIRST_PROJECT_ID + self.projects.len() as u64;
        let group = &self.groups[owner];
        self.projects.push(Project {
            id,
            name: path.to_owned(),
            path: path.to_owned(),
            path_with_namespace: format!("{}/{path}", group.full_path),
            name_with_namespace: format!("{} / {path}", group.full_name),
            description: description.to_owned(),
            group_id: group.id,
            archived,
            shared_with: Vec::new(),
            created_at: synthetic_timestamp(id),
            last_activity_at: synthetic_timestamp(id),
            statistics: Statistics::seeded(id),
        });
    }

    /// Shares the project with this path into the group with this full path; both were added before.
    fn share(&mut self, project_path: &str, group_full_path: &str) {
        let group_id = self.group_by_path(group_full_path).map(|group| group.id);
        let project = self
            .projects
            .iter_mut()
            .find(|project| project.path_with_namespace == project_path);
        if let (Some(project), Some(group_id)) = (project, group_id) {
            project.shared_with.push(group_id);
        }
    }
}

/// `2024-01-01T00:00:00.000Z` plus `id` seconds: deterministic and increasing with the id (for ids
/// below 2,678,400, i.e. within January, far beyond any seed built here).
fn synthetic_timestamp(id: u64) -> String {
    let (day, second_of_day) = (id / 86_400, id % 86_400);
    format!(
        "2024-01-{:02}T{:02}:{:02}:{:02}.000Z",
        1 + day,
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}
