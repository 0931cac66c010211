//! The role model and provisioning configuration (SPEC sections 5 and 6), resolved.

use std::path::PathBuf;

/// An SQL expression from the configuration, with the line it is written on.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigExpr {
    pub text: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub owner: String,
    pub rule: Option<ConfigExpr>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct CompositeRole {
    pub name: String,
    pub owner: String,
    pub rule: Option<ConfigExpr>,
    pub roles: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct ManualAssignments {
    pub file: PathBuf,
    pub csv: super::CsvOptions,
    pub line: usize,
}

/// What happens to an account whose owner lost the resource (or to an orphan account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAction {
    Delete,
    Disable,
    Keep,
}

impl LostAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "delete" => Self::Delete,
            "disable" => Self::Disable,
            "keep" => Self::Keep,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Disable => "disable",
            Self::Keep => "keep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Managed {
    /// Only values named in the resource type's link rules are ever removed.
    Rules,
    /// Every value that is not desired is removed.
    All,
}

#[derive(Debug, Clone)]
pub struct CorrelationRule {
    /// 1-based, in file order.
    pub number: i64,
    pub target: ConfigExpr,
    pub owner: ConfigExpr,
    pub confidence: i64,
}

#[derive(Debug, Clone)]
pub struct LinkValue {
    /// Granted to owners holding this role…
    pub role: Option<String>,
    /// …or to owners for whom this expression holds (neither: every assigned owner).
    pub rule: Option<ConfigExpr>,
    /// The value (a key of the link's `to` entity).
    pub target: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct ResourceLink {
    pub link: String,
    pub managed: Managed,
    pub values: Vec<LinkValue>,
}

#[derive(Debug, Clone)]
pub struct ProvisioningThresholds {
    pub min_rows: u64,
    pub max_deleted_percent: f64,
    pub max_deleted: Option<u64>,
    pub max_added_percent: Option<f64>,
    pub max_modified_percent: Option<f64>,
}

impl Default for ProvisioningThresholds {
    fn default() -> Self {
        Self {
            min_rows: 100,
            max_deleted_percent: 30.0,
            max_deleted: None,
            max_added_percent: None,
            max_modified_percent: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub name: String,
    pub owner: String,
    pub target: String,
    /// The target entity's connector: orders go to its file.
    pub connector: String,
    pub rule: Option<ConfigExpr>,
    pub roles: Vec<String>,
    pub on_lost: LostAction,
    pub orphans: LostAction,
    /// (target column, expression over the owner) values that mean "disabled".
    pub disable: Vec<(String, ConfigExpr)>,
    pub create_only: Vec<String>,
    pub correlation: Vec<CorrelationRule>,
    /// (target column, expression over the owner).
    pub scalars: Vec<(String, ConfigExpr)>,
    pub links: Vec<ResourceLink>,
    pub thresholds: ProvisioningThresholds,
    pub lifecycle: Option<RtLifecycle>,
    pub line: usize,
}

impl ResourceType {
    /// Neither `rule` nor `roles`: every owner is assigned (SPEC 11.12).
    pub fn assigns_everyone(&self) -> bool {
        self.rule.is_none() && self.roles.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Classification {
    pub target: String,
    pub name: String,
    pub rule: ConfigExpr,
    pub protect: bool,
    pub line: usize,
}

/// `[resource_type.lifecycle]` (SPEC section 9).
#[derive(Debug, Clone)]
pub struct RtLifecycle {
    /// Identity type feature UpdateIdentity.
    pub update: bool,
    /// UpdateIdentityWhenCoreIdentityIsDisabled.
    pub update_when_owner_disabled: bool,
    /// Whether the account is active, over the target's columns (default: true).
    pub active: Option<ConfigExpr>,
    /// Who deactivated the account by hand, over the target's columns (default: NULL).
    pub deactivated_by: Option<ConfigExpr>,
}

/// `[lifecycle]` (SPEC section 9).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub owner: String,
    /// Owner state: 1 Active, 2 Deleted, 3 Suspended.
    pub state: ConfigExpr,
    /// 0 none, 2 pending anonymization (3, 4, 5 are kept by the engine).
    pub anonymization_status: Option<ConfigExpr>,
    /// (owner column, expression) replacing personal data.
    pub anonymize: Vec<(String, ConfigExpr)>,
    pub fast_track: bool,
    pub line: usize,
}

/// Everything of sections 5 and 6.
#[derive(Debug, Clone, Default)]
pub struct RoleModel {
    pub roles: Vec<Role>,
    pub composite_roles: Vec<CompositeRole>,
    pub manual_assignments: Option<ManualAssignments>,
    pub resource_types: Vec<ResourceType>,
    pub classifications: Vec<Classification>,
    pub lifecycle: Option<Lifecycle>,
}

impl RoleModel {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }
    pub fn composite(&self, name: &str) -> Option<&CompositeRole> {
        self.composite_roles.iter().find(|r| r.name == name)
    }
    pub fn resource_type(&self, name: &str) -> Option<&ResourceType> {
        self.resource_types.iter().find(|r| r.name == name)
    }
}
