//! Checks of the role model sections: names, references, and every expression planned against
//! the schema it runs on (rules and scalars over the owner, correlation on both sides,
//! classification over the target).

use std::collections::HashSet;
use std::path::PathBuf;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::DataFrame;

use super::raw::{self, S};
use super::{Ctx, join_names, percent, resolve_csv};
use crate::config::model::*;
use crate::config::{Entity, Link};

/// Empty frames with each entity's full schema, for planning expressions.
struct Schemas {
    ctx: datafusion::prelude::SessionContext,
    frames: Vec<(String, Option<DataFrame>)>,
}

impl Schemas {
    fn new(entities: &[Entity], broken: &HashSet<String>) -> Self {
        let ctx = crate::engine::context();
        let frames = entities
            .iter()
            .map(|e| {
                let df = if broken.contains(&e.name) {
                    None
                } else {
                    crate::engine::expr::empty_entity_frame(&ctx, e).ok()
                };
                (e.name.clone(), df)
            })
            .collect();
        Self { ctx, frames }
    }

    /// Plans `expr` over `entity`; reports a problem when it does not plan or, with `boolean`,
    /// when it is not a condition. `what` names the place ("role `x`: rule").
    fn check(&self, cx: &mut Ctx, entity: &str, expr: &ConfigExpr, what: &str, boolean: bool) {
        let Some((_, Some(df))) = self.frames.iter().find(|(n, _)| n == entity) else {
            return; // unknown or broken entity: reported elsewhere
        };
        match crate::engine::expr::plan_expr(&self.ctx, df, &expr.text) {
            Ok(ty) if boolean && !matches!(ty, DataType::Boolean | DataType::Null) => cx.err_line(
                expr.line,
                format!(
                    "{what} \"{}\" is a {ty}, not a condition (over `{entity}`); write a comparison such as `status = 'active'`",
                    expr.text
                ),
            ),
            Ok(_) => {}
            Err(m) => cx.err_line(
                expr.line,
                format!(
                    "{what} \"{}\" does not plan over the columns of `{entity}`: {m}",
                    expr.text
                ),
            ),
        }
    }
}

fn expr(cx: &Ctx, s: &S<String>) -> ConfigExpr {
    ConfigExpr {
        text: s.get_ref().clone(),
        line: cx.line(s),
    }
}

pub(super) struct ModelInput<'a> {
    pub raw: &'a raw::RawPipeline,
    pub entities: &'a [Entity],
    pub links: &'a [Link],
    /// Entities whose own declaration has a problem (their expressions are not planned).
    pub broken: HashSet<String>,
    pub resolve_path: &'a dyn Fn(&str) -> PathBuf,
}

pub(super) fn resolve_model(cx: &mut Ctx, input: ModelInput) -> RoleModel {
    let ModelInput {
        raw,
        entities,
        links,
        broken,
        resolve_path,
    } = input;
    let schemas = Schemas::new(entities, &broken);
    let entity_names: Vec<String> = entities.iter().map(|e| e.name.clone()).collect();
    let entity = |name: &str| entities.iter().find(|e| e.name == name);

    // The owner a role takes when it names none: the only owner entity resource types use.
    let rt_owners: Vec<String> = {
        let mut v: Vec<String> = raw
            .resource_type
            .iter()
            .filter_map(|r| r.get_ref().owner.as_ref().map(|o| o.get_ref().clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let default_owner = |cx: &mut Ctx, owner: &Option<S<String>>, at: &S<String>, what: &str| {
        match owner {
            Some(o) => {
                if entity(o.get_ref()).is_none() {
                    cx.err(
                        o,
                        format!(
                            "{what}: unknown owner entity `{}` (declared: {})",
                            o.get_ref(),
                            join_names(entity_names.iter())
                        ),
                    );
                }
                o.get_ref().clone()
            }
            None if rt_owners.len() == 1 => rt_owners[0].clone(),
            None => {
                cx.err(
                    at,
                    format!(
                        "{what}: no `owner`, and resource types use {} owner entities; add owner = \"person\"",
                        rt_owners.len()
                    ),
                );
                String::new()
            }
        }
    };

    let mut seen_roles = HashSet::new();
    let mut roles = Vec::new();
    for r in &raw.role {
        let line = cx.line(r);
        let r = r.get_ref();
        let name = r.name.get_ref().clone();
        if !seen_roles.insert(name.clone()) {
            cx.err(&r.name, format!("role `{name}` is declared twice"));
        }
        let owner = default_owner(cx, &r.owner, &r.name, &format!("role `{name}`"));
        let rule = r.rule.as_ref().map(|s| expr(cx, s));
        if let Some(rule) = &rule {
            schemas.check(cx, &owner, rule, &format!("role `{name}`: rule"), true);
        }
        roles.push(Role {
            name,
            owner,
            rule,
            line,
        });
    }
    let single: HashSet<String> = roles.iter().map(|r| r.name.clone()).collect();
    let mut composite_roles = Vec::new();
    for c in &raw.composite_role {
        let line = cx.line(c);
        let c = c.get_ref();
        let name = c.name.get_ref().clone();
        if !seen_roles.insert(name.clone()) {
            cx.err(
                &c.name,
                format!(
                    "role `{name}` is declared twice (as a role and a composite role, or twice)"
                ),
            );
        }
        let owner = default_owner(cx, &c.owner, &c.name, &format!("composite role `{name}`"));
        let rule = c.rule.as_ref().map(|s| expr(cx, s));
        if let Some(rule) = &rule {
            schemas.check(
                cx,
                &owner,
                rule,
                &format!("composite role `{name}`: rule"),
                true,
            );
        }
        for role in c.roles.get_ref() {
            if !single.contains(role) {
                cx.err(
                    &c.roles,
                    format!(
                        "composite role `{name}`: `{role}` is not a declared single role (composite roles list single roles only; single roles: {})",
                        join_names(roles.iter().map(|r| &r.name))
                    ),
                );
            }
        }
        composite_roles.push(CompositeRole {
            name,
            owner,
            rule,
            roles: c.roles.get_ref().clone(),
            line,
        });
    }

    // What is wrong with a role a resource type or a link value names: unknown, or composite
    // (the owners hold single roles only, SPEC 11.6, so a composite name would never match).
    let role_problem = |role: &str| -> Option<String> {
        if let Some(c) = composite_roles.iter().find(|c| c.name == role) {
            return Some(format!(
                "`{role}` is a composite role; name its single roles ({}) instead: owners hold single roles only",
                c.roles.join(", ")
            ));
        }
        (!seen_roles.contains(role)).then(|| format!("unknown role `{role}`"))
    };

    let manual_assignments = raw.manual_assignments.as_ref().map(|m| {
        let line = cx.line(m);
        let m = m.get_ref();
        ManualAssignments {
            file: resolve_path(m.file.get_ref()),
            csv: resolve_csv(cx, &m.csv),
            line,
        }
    });

    let mut resource_types = Vec::new();
    let mut seen_rt = HashSet::new();
    for rt in &raw.resource_type {
        let line = cx.line(rt);
        let r = rt.get_ref();
        let name = r.name.get_ref().clone();
        let what = format!("resource type `{name}`");
        if !seen_rt.insert(name.clone()) {
            cx.err(&r.name, format!("{what} is declared twice"));
        }
        let owner = default_owner(cx, &r.owner, &r.name, &what);
        let target = r.target.get_ref().clone();
        let target_entity = entity(&target);
        if target_entity.is_none() {
            cx.err(
                &r.target,
                format!(
                    "{what}: unknown target entity `{target}` (declared: {})",
                    join_names(entity_names.iter())
                ),
            );
        }
        let target_columns: Vec<String> = target_entity
            .map(|e| e.columns.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let rule = r.rule.as_ref().map(|s| expr(cx, s));
        if let Some(rule) = &rule {
            schemas.check(cx, &owner, rule, &format!("{what}: rule"), true);
        }
        let role_list: Vec<String> = r
            .roles
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default();
        if let Some(rs) = &r.roles {
            for role in rs.get_ref() {
                if let Some(problem) = role_problem(role) {
                    cx.err(rs, format!("{what}: {problem}"));
                }
            }
        }
        let lost = |cx: &mut Ctx, v: &Option<S<String>>, key: &str| match v {
            None => LostAction::Keep,
            Some(s) => LostAction::parse(s.get_ref()).unwrap_or_else(|| {
                cx.err(
                    s,
                    format!(
                        "{what}: {key} = \"{}\" is not delete, disable or keep",
                        s.get_ref()
                    ),
                );
                LostAction::Keep
            }),
        };
        let on_lost = lost(cx, &r.on_lost, "on_lost");
        let orphans = lost(cx, &r.orphans, "orphans");
        let column_exprs =
            |cx: &mut Ctx, map: &indexmap::IndexMap<String, S<String>>, key: &str| {
                let mut out = Vec::new();
                for (col, e) in map {
                    if target_entity.is_some() && !target_columns.contains(col) {
                        cx.err(
                            e,
                            format!(
                                "{what}: {key} `{col}` is not a column of `{target}` (columns: {})",
                                join_names(target_columns.iter())
                            ),
                        );
                    }
                    let e = expr(cx, e);
                    schemas.check(cx, &owner, &e, &format!("{what}: {key} `{col}`"), false);
                    out.push((col.clone(), e));
                }
                out
            };
        let scalars = column_exprs(cx, &r.scalars, "scalar");
        let disable = column_exprs(cx, &r.disable, "disable value");
        if (on_lost == LostAction::Disable || orphans == LostAction::Disable) && disable.is_empty()
        {
            cx.err(
                &r.name,
                format!("{what}: on_lost or orphans is \"disable\" but `disable` gives no values; add disable = {{ column = \"value\" }}"),
            );
        }
        let mut create_only = Vec::new();
        for c in &r.create_only {
            if !r.scalars.contains_key(c.get_ref()) {
                cx.err(
                    c,
                    format!(
                        "{what}: create_only `{}` is not one of its scalars",
                        c.get_ref()
                    ),
                );
            }
            create_only.push(c.get_ref().clone());
        }
        let mut correlation = Vec::new();
        for (i, c) in r.correlation.iter().enumerate() {
            let cr = c.get_ref();
            let t = expr(cx, &cr.target);
            let o = expr(cx, &cr.owner);
            let label = format!("{what}: correlation rule {}", i + 1);
            schemas.check(cx, &target, &t, &format!("{label} target"), false);
            schemas.check(cx, &owner, &o, &format!("{label} owner"), false);
            let confidence = match &cr.confidence {
                None => 100,
                Some(s) if (1..=100).contains(s.get_ref()) => *s.get_ref(),
                Some(s) => {
                    cx.err(
                        s,
                        format!(
                            "{label}: confidence {} is not between 1 and 100",
                            s.get_ref()
                        ),
                    );
                    100
                }
            };
            correlation.push(CorrelationRule {
                number: i as i64 + 1,
                target: t,
                owner: o,
                confidence,
            });
        }
        let mut rt_links = Vec::new();
        for l in &r.link {
            let lr = l.get_ref();
            let lname = lr.link.get_ref().clone();
            match links.iter().find(|k| k.name == lname) {
                None => cx.err(
                    &lr.link,
                    format!(
                        "{what}: unknown link `{lname}` (declared: {})",
                        join_names(links.iter().map(|k| &k.name))
                    ),
                ),
                Some(k) if k.from.entity != target => cx.err(
                    &lr.link,
                    format!(
                        "{what}: link `{lname}` goes from `{}`, not from the target `{target}`",
                        k.from.entity
                    ),
                ),
                Some(_) => {}
            }
            let managed = match lr.managed.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("rules") => Managed::Rules,
                Some("all") => Managed::All,
                Some(other) => {
                    cx.err(
                        lr.managed.as_ref().unwrap(),
                        format!(
                            "{what}: link `{lname}`: managed = \"{other}\" is not rules or all"
                        ),
                    );
                    Managed::Rules
                }
            };
            let mut values = Vec::new();
            for v in &lr.values {
                let vline = cx.line(v);
                let vr = v.get_ref();
                if let Some(role) = &vr.role
                    && let Some(problem) = role_problem(role.get_ref())
                {
                    cx.err(role, format!("{what}: link `{lname}`: {problem}"));
                }
                let rule = vr.rule.as_ref().map(|s| expr(cx, s));
                if let Some(rule) = &rule {
                    schemas.check(
                        cx,
                        &owner,
                        rule,
                        &format!("{what}: link `{lname}` value rule"),
                        true,
                    );
                }
                values.push(LinkValue {
                    role: vr.role.as_ref().map(|s| s.get_ref().clone()),
                    rule,
                    target: vr.target.get_ref().clone(),
                    line: vline,
                });
            }
            rt_links.push(ResourceLink {
                link: lname,
                managed,
                values,
            });
        }
        let t = &r.thresholds;
        let d = ProvisioningThresholds::default();
        let target_name = target.clone();
        let rt_what = what.clone();
        resource_types.push(ResourceType {
            name,
            owner,
            connector: target_entity
                .map(|e| e.connector.clone())
                .unwrap_or_default(),
            target,
            rule,
            roles: role_list,
            on_lost,
            orphans,
            disable,
            create_only,
            correlation,
            scalars,
            links: rt_links,
            thresholds: ProvisioningThresholds {
                min_rows: t.min_rows.unwrap_or(d.min_rows),
                max_deleted_percent: percent(
                    cx,
                    &t.max_deleted_percent,
                    "max_deleted_percent",
                    &what,
                )
                .unwrap_or(d.max_deleted_percent),
                max_deleted: t.max_deleted,
                max_added_percent: percent(cx, &t.max_added_percent, "max_added_percent", &what),
                max_modified_percent: percent(
                    cx,
                    &t.max_modified_percent,
                    "max_modified_percent",
                    &what,
                ),
            },
            lifecycle: r.lifecycle.as_ref().map(|l| {
                let l = l.get_ref();
                let active = l.active.as_ref().map(|e| expr(cx, e));
                if let Some(a) = &active {
                    schemas.check(
                        cx,
                        &target_name,
                        a,
                        &format!("{rt_what}: lifecycle active"),
                        true,
                    );
                }
                let deactivated_by = l.deactivated_by.as_ref().map(|e| expr(cx, e));
                if let Some(d) = &deactivated_by {
                    schemas.check(
                        cx,
                        &target_name,
                        d,
                        &format!("{rt_what}: lifecycle deactivated_by"),
                        false,
                    );
                }
                RtLifecycle {
                    update: l.update,
                    update_when_owner_disabled: l.update_when_owner_disabled,
                    active,
                    deactivated_by,
                }
            }),
            line,
        });
    }

    let mut classifications = Vec::new();
    for c in &raw.classification {
        let line = cx.line(c);
        let r = c.get_ref();
        let target = r.target.get_ref().clone();
        if entity(&target).is_none() {
            cx.err(
                &r.target,
                format!(
                    "classification `{}`: unknown target entity `{target}` (declared: {})",
                    r.name.get_ref(),
                    join_names(entity_names.iter())
                ),
            );
        }
        let rule = expr(cx, &r.rule);
        schemas.check(
            cx,
            &target,
            &rule,
            &format!("classification `{}`: rule", r.name.get_ref()),
            true,
        );
        classifications.push(Classification {
            target,
            name: r.name.get_ref().clone(),
            rule,
            protect: r.protect,
            line,
        });
    }

    let lifecycle = raw.lifecycle.as_ref().map(|l| {
        let line = cx.line(l);
        let l = l.get_ref();
        let owner = l.owner.get_ref().clone();
        let owner_entity = entity(&owner);
        if owner_entity.is_none() {
            cx.err(
                &l.owner,
                format!(
                    "[lifecycle]: unknown owner entity `{owner}` (declared: {})",
                    join_names(entity_names.iter())
                ),
            );
        }
        let state = expr(cx, &l.state);
        schemas.check(cx, &owner, &state, "[lifecycle]: state", false);
        let anonymization_status = l.anonymization_status.as_ref().map(|e| expr(cx, e));
        if let Some(a) = &anonymization_status {
            schemas.check(cx, &owner, a, "[lifecycle]: anonymization_status", false);
        }
        let mut anonymize = Vec::new();
        for (column, e) in &l.anonymize {
            if owner_entity.is_some_and(|o| !o.columns.iter().any(|c| &c.name == column)) {
                cx.err(
                    e,
                    format!(
                        "[lifecycle]: anonymize `{column}` is not a declared column of `{owner}`"
                    ),
                );
            }
            let e = expr(cx, e);
            schemas.check(
                cx,
                &owner,
                &e,
                &format!("[lifecycle]: anonymize `{column}`"),
                false,
            );
            anonymize.push((column.clone(), e));
        }
        Lifecycle {
            owner,
            state,
            anonymization_status,
            anonymize,
            fast_track: l.fast_track,
            line,
        }
    });

    RoleModel {
        roles,
        composite_roles,
        manual_assignments,
        resource_types,
        classifications,
        lifecycle,
    }
}
