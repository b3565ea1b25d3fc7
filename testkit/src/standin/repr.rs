//! JSON representations of seed entities, shaped like GitLab's API entities (`API::Entities::Group`,
//! `BasicProjectDetails`/`Project`, `ProjectStatistics`, `ProjectExportStatus`). Only fields a backup client could care
//! about are filled; URLs are built on the stand-in's public base URL.

use serde::Serialize;

use super::seed::{Group, Project, Seed, Statistics};

/// Export state of a project for the requesting user, as in GitLab's `export_status` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportStatus {
    None,
    Queued,
    Started,
    Finished,
    Failed,
}

impl ExportStatus {
    /// Whether an export in this state is still running.
    pub fn is_active(self) -> bool {
        matches!(self, ExportStatus::Queued | ExportStatus::Started)
    }
}

/// `GET /groups/:id`.
#[derive(Serialize)]
pub struct GroupJson<'a> {
    id: u64,
    web_url: String,
    name: &'a str,
    path: &'a str,
    description: &'a str,
    visibility: &'static str,
    full_name: &'a str,
    full_path: &'a str,
    parent_id: Option<u64>,
    created_at: &'a str,
}

impl<'a> GroupJson<'a> {
    pub fn new(group: &'a Group, base: &str) -> Self {
        GroupJson {
            id: group.id,
            web_url: format!("{base}/groups/{}", group.full_path),
            name: &group.name,
            path: &group.path,
            description: "",
            visibility: "private",
            full_name: &group.full_name,
            full_path: &group.full_path,
            parent_id: group.parent_id,
            created_at: &group.created_at,
        }
    }
}

/// The `namespace` object embedded in project representations.
#[derive(Serialize)]
struct NamespaceJson<'a> {
    id: u64,
    name: &'a str,
    path: &'a str,
    kind: &'static str,
    full_path: &'a str,
    parent_id: Option<u64>,
    web_url: String,
}

/// `API::Entities::ProjectIdentity`: the fields that open every project representation.
#[derive(Serialize)]
struct ProjectIdentityJson<'a> {
    id: u64,
    description: &'a str,
    name: &'a str,
    name_with_namespace: &'a str,
    path: &'a str,
    path_with_namespace: &'a str,
    created_at: &'a str,
}

impl<'a> ProjectIdentityJson<'a> {
    fn new(project: &'a Project) -> Self {
        ProjectIdentityJson {
            id: project.id,
            description: &project.description,
            name: &project.name,
            name_with_namespace: &project.name_with_namespace,
            path: &project.path,
            path_with_namespace: &project.path_with_namespace,
            created_at: &project.created_at,
        }
    }
}

/// The project representation of `GET /groups/:id/projects?simple=true`.
#[derive(Serialize)]
pub struct SimpleProjectJson<'a> {
    #[serde(flatten)]
    identity: ProjectIdentityJson<'a>,
    default_branch: &'static str,
    topics: [&'static str; 0],
    web_url: String,
    star_count: u32,
    forks_count: u32,
    last_activity_at: &'a str,
    namespace: NamespaceJson<'a>,
}

impl<'a> SimpleProjectJson<'a> {
    /// `None` only if the project's owning group is missing from the seed, which seeds never allow.
    pub fn new(project: &'a Project, seed: &'a Seed, base: &str) -> Option<Self> {
        let group = seed.group(project.group_id)?;
        Some(SimpleProjectJson {
            identity: ProjectIdentityJson::new(project),
            default_branch: "main",
            topics: [],
            web_url: format!("{base}/{}", project.path_with_namespace),
            star_count: 0,
            forks_count: 0,
            last_activity_at: &project.last_activity_at,
            namespace: NamespaceJson {
                id: group.id,
                name: &group.name,
                path: &group.path,
                kind: "group",
                full_path: &group.full_path,
                parent_id: group.parent_id,
                web_url: format!("{base}/groups/{}", group.full_path),
            },
        })
    }
}

/// A group a project is shared with, as listed in the full project representation.
#[derive(Serialize)]
struct SharedWithGroupJson<'a> {
    group_id: u64,
    group_name: &'a str,
    group_full_path: &'a str,
    group_access_level: u8,
}

/// The full project representation (listing without `simple=true`; also `project.json` in exports).
#[derive(Serialize)]
pub struct ProjectJson<'a> {
    #[serde(flatten)]
    simple: SimpleProjectJson<'a>,
    archived: bool,
    visibility: &'static str,
    empty_repo: bool,
    shared_with_groups: Vec<SharedWithGroupJson<'a>>,
}

impl<'a> ProjectJson<'a> {
    /// `None` only if the project's owning group is missing from the seed, which seeds never allow.
    pub fn new(project: &'a Project, seed: &'a Seed, base: &str) -> Option<Self> {
        Some(ProjectJson {
            simple: SimpleProjectJson::new(project, seed, base)?,
            archived: project.archived,
            visibility: "private",
            empty_repo: false,
            shared_with_groups: project
                .shared_with
                .iter()
                .filter_map(|&id| seed.group(id))
                .map(|group| SharedWithGroupJson {
                    group_id: group.id,
                    group_name: &group.name,
                    group_full_path: &group.full_path,
                    // Developer.
                    group_access_level: 30,
                })
                .collect(),
        })
    }
}

/// `GET /projects/:id`: the full project, with its statistics when asked for (`statistics=true`).
#[derive(Serialize)]
pub struct ProjectDetailJson<'a> {
    #[serde(flatten)]
    project: ProjectJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statistics: Option<StatisticsJson>,
}

impl<'a> ProjectDetailJson<'a> {
    /// `None` only if the project's owning group is missing from the seed.
    pub fn new(project: &'a Project, seed: &'a Seed, base: &str, statistics: bool) -> Option<Self> {
        Some(ProjectDetailJson {
            project: ProjectJson::new(project, seed, base)?,
            statistics: statistics.then(|| StatisticsJson::new(&project.statistics)),
        })
    }
}

/// `API::Entities::ProjectStatistics`.
#[derive(Serialize)]
struct StatisticsJson {
    commit_count: u64,
    storage_size: u64,
    repository_size: u64,
    wiki_size: u64,
    lfs_objects_size: u64,
    job_artifacts_size: u64,
    pipeline_artifacts_size: u64,
    packages_size: u64,
    snippets_size: u64,
    uploads_size: u64,
    container_registry_size: u64,
}

impl StatisticsJson {
    fn new(s: &Statistics) -> Self {
        StatisticsJson {
            commit_count: s.commit_count,
            storage_size: s.storage_size(),
            repository_size: s.repository_size,
            wiki_size: s.wiki_size,
            lfs_objects_size: s.lfs_objects_size,
            job_artifacts_size: s.job_artifacts_size,
            pipeline_artifacts_size: s.pipeline_artifacts_size,
            packages_size: s.packages_size,
            snippets_size: s.snippets_size,
            uploads_size: s.uploads_size,
            container_registry_size: s.container_registry_size,
        }
    }
}

/// `GET /projects/:id/export`.
#[derive(Serialize)]
pub struct ExportStatusJson<'a> {
    #[serde(flatten)]
    identity: ProjectIdentityJson<'a>,
    export_status: ExportStatus,
}

impl<'a> ExportStatusJson<'a> {
    pub fn new(project: &'a Project, export_status: ExportStatus) -> Self {
        ExportStatusJson {
            identity: ProjectIdentityJson::new(project),
            export_status,
        }
    }
}

/// A project's import state, as GitLab's `import_status` field (`ProjectImportState`'s states;
/// `none` for a project that was never imported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportStatus {
    None,
    Scheduled,
    Started,
    Finished,
    Failed,
}

impl ImportStatus {
    /// Whether an import in this state is still running.
    pub fn is_active(self) -> bool {
        matches!(self, ImportStatus::Scheduled | ImportStatus::Started)
    }
}

/// `API::Entities::ProjectImportStatus` (`ProjectIdentity` plus the import fields), the answer of
/// `POST /projects/remote-import` and `GET /projects/:id/import`.
#[derive(Serialize)]
pub struct ProjectImportStatusJson<'a> {
    #[serde(flatten)]
    identity: ProjectIdentityJson<'a>,
    import_status: ImportStatus,
    /// `gitlab_project` for a project created by an import, else `null`.
    import_type: Option<&'static str>,
    correlation_id: Option<String>,
    /// `ProjectImportFailedRelation`s; the stand-in's imports never fail a single relation.
    failed_relations: [(); 0],
    import_error: Option<&'a str>,
    stats: Option<()>,
}

impl<'a> ProjectImportStatusJson<'a> {
    /// `import` is the project's import (its status, error and correlation id), if it was imported.
    pub fn new(
        project: &'a Project,
        import: Option<(ImportStatus, Option<&'a str>, String)>,
    ) -> Self {
        let (import_status, import_error, correlation_id) = match import {
            Some((status, error, correlation_id)) => (status, error, Some(correlation_id)),
            None => (ImportStatus::None, None, None),
        };
        ProjectImportStatusJson {
            identity: ProjectIdentityJson::new(project),
            import_status,
            import_type: correlation_id.is_some().then_some("gitlab_project"),
            correlation_id,
            failed_relations: [],
            import_error,
            stats: None,
        }
    }
}
