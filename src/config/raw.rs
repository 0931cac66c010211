//! The shape of `pipeline.toml` as serde reads it: every section, every key, nothing else.
//!
//! `deny_unknown_fields` everywhere turns a typo into an error that names the line. Spans are
//! kept on the values that later checks may reject, so those errors name the line too. Maps use
//! `IndexMap` because declaration order matters (columns keep it; computed columns may use the
//! ones declared before them).

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: S<String>,
    #[serde(default)]
    pub store: Option<RawStore>,
    #[serde(default)]
    pub connector: IndexMap<String, S<RawConnector>>,
    #[serde(default)]
    pub entity: Vec<S<RawEntity>>,
    #[serde(default)]
    pub link: Vec<S<RawLink>>,
    #[serde(default)]
    pub job: Vec<S<RawJob>>,
    #[serde(default)]
    pub output: Option<RawOutput>,
    #[serde(default)]
    pub role: Vec<S<RawRole>>,
    #[serde(default)]
    pub composite_role: Vec<S<RawCompositeRole>>,
    #[serde(default)]
    pub manual_assignments: Option<S<RawManualAssignments>>,
    #[serde(default)]
    pub resource_type: Vec<S<RawResourceType>>,
    #[serde(default)]
    pub classification: Vec<S<RawClassification>>,
    #[serde(default)]
    pub notify: Option<S<RawNotify>>,
    #[serde(default)]
    pub lifecycle: Option<S<RawLifecycle>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub uri: Option<S<String>>,
    pub deletion_vectors: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub orders: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnector {
    pub exports: S<String>,
    #[serde(default)]
    pub update: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCsv {
    pub delimiter: Option<S<String>>,
    pub on_bad_row: Option<S<String>>,
    pub command_column: Option<S<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    pub min_rows: Option<u64>,
    pub max_deleted_percent: Option<S<f64>>,
    pub max_deleted: Option<u64>,
    pub max_inserted_percent: Option<S<f64>>,
    pub max_inserted: Option<u64>,
    pub max_updated_percent: Option<S<f64>>,
    pub max_updated: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    pub name: S<String>,
    pub connector: S<String>,
    pub file: S<String>,
    pub key: S<String>,
    #[serde(default)]
    pub csv: RawCsv,
    #[serde(default)]
    pub thresholds: RawThresholds,
    pub columns: IndexMap<String, S<String>>,
    #[serde(default)]
    pub computed: IndexMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub entity: S<String>,
    pub column: S<String>,
    pub separator: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub name: S<String>,
    pub connector: S<String>,
    pub file: S<String>,
    pub from: S<RawEndpoint>,
    pub to: S<RawEndpoint>,
    #[serde(default)]
    pub csv: RawCsv,
    #[serde(default)]
    pub thresholds: RawThresholds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub name: S<String>,
    pub schedule: Option<S<String>>,
    pub interval: Option<S<String>>,
    #[serde(default)]
    pub concurrent: bool,
    #[serde(default)]
    pub task: Vec<S<RawTask>>,
}

/// Every task parameter of every type; which ones a type accepts is checked afterwards so the
/// error can say "`command` is not a parameter of `synchronize`".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub name: S<String>,
    #[serde(rename = "type")]
    pub kind: S<String>,
    pub depends_on: Option<S<Vec<String>>>,
    #[serde(default)]
    pub continue_on_error: bool,
    pub run_if: Option<S<String>>,
    #[serde(default)]
    pub dirty: bool,
    pub connector: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub force: Option<S<bool>>,
    pub entities: Option<S<Vec<String>>>,
    pub resource_types: Option<S<Vec<String>>>,
    pub command: Option<S<Vec<String>>>,
    pub timeout: Option<S<String>>,
    pub env: Option<S<IndexMap<String, String>>>,
    pub sql: Option<S<String>>,
    pub output: Option<S<String>>,
    pub format: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: S<String>,
    pub owner: Option<S<String>>,
    pub rule: Option<S<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompositeRole {
    pub name: S<String>,
    pub owner: Option<S<String>>,
    pub rule: Option<S<String>>,
    pub roles: S<Vec<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManualAssignments {
    pub file: S<String>,
    #[serde(default)]
    pub csv: RawCsv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCorrelation {
    pub target: S<String>,
    pub owner: S<String>,
    pub confidence: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLinkValue {
    pub role: Option<S<String>>,
    pub rule: Option<S<String>>,
    pub target: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceLink {
    pub link: S<String>,
    pub managed: Option<S<String>>,
    #[serde(default)]
    pub values: Vec<S<RawLinkValue>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvisioningThresholds {
    pub min_rows: Option<u64>,
    pub max_deleted_percent: Option<S<f64>>,
    pub max_deleted: Option<u64>,
    pub max_added_percent: Option<S<f64>>,
    pub max_modified_percent: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceType {
    pub name: S<String>,
    pub owner: Option<S<String>>,
    pub target: S<String>,
    pub rule: Option<S<String>>,
    pub roles: Option<S<Vec<String>>>,
    pub on_lost: Option<S<String>>,
    #[serde(default)]
    pub disable: IndexMap<String, S<String>>,
    pub orphans: Option<S<String>>,
    #[serde(default)]
    pub create_only: Vec<S<String>>,
    #[serde(default)]
    pub correlation: Vec<S<RawCorrelation>>,
    #[serde(default)]
    pub scalars: IndexMap<String, S<String>>,
    #[serde(default)]
    pub link: Vec<S<RawResourceLink>>,
    #[serde(default)]
    pub thresholds: RawProvisioningThresholds,
    /// Section 9 (identity update).
    pub lifecycle: Option<S<RawRtLifecycle>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassification {
    pub target: S<String>,
    pub name: S<String>,
    pub rule: S<String>,
    #[serde(default)]
    pub protect: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub to: Vec<String>,
    pub from: S<String>,
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS) or `smtps://…`.
    pub smtp: Option<S<String>>,
}

/// `[lifecycle]` (SPEC section 9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    pub owner: S<String>,
    pub state: S<String>,
    pub anonymization_status: Option<S<String>>,
    #[serde(default)]
    pub anonymize: IndexMap<String, S<String>>,
    #[serde(default)]
    pub fast_track: bool,
}

/// `[resource_type.lifecycle]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtLifecycle {
    #[serde(default)]
    pub update: bool,
    #[serde(default)]
    pub update_when_owner_disabled: bool,
    pub active: Option<S<String>>,
    pub deactivated_by: Option<S<String>>,
}
