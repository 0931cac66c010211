//! `generate_provisioning_orders`: what must change in each target system (SPEC section 6).
//!
//! `sql/orders.sql` computes, per resource type and over whole tables, the long table of order
//! parts (an order's header, each attribute change, each link value to add or remove), one kind
//! of part at a time so that few operators hold memory at once. This
//! module then shapes the parts into orders — the JSON document and Parquet file per connector
//! are output formatting — gives each order an id derived from its content, applies the
//! provisioning thresholds and merges the orders into `provisioning_orders`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::dirty::{SemiOn, Side};
use super::frames::{NewTable, commit_tables, committed, quoted, require, session};
use super::role_model::{empty, text_batch, union_all, view};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{ColumnType, LostAction, Managed, ResourceType, Task};
use crate::error::{Error, Result, exit};
use crate::store::Catalog;

const ORDERS_SQL: &str = include_str!("../../sql/orders.sql");
const LINK_CANDIDATES_SQL: &str = include_str!("../../sql/link_candidates.sql");
pub const TABLE: &str = "provisioning_orders";

/// One provisioning order as emitted (the JSON shape of SPEC section 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub change_type: String,
    pub resource_type: String,
    pub entity: String,
    pub owner: Option<OwnerRef>,
    pub resource_key: Option<String>,
    pub attributes: BTreeMap<String, Change>,
    pub links: BTreeMap<String, LinkChange>,
    #[serde(skip)]
    pub connector: String,
    #[serde(skip)]
    pub kind: String,
    #[serde(skip)]
    pub account_key: Option<String>,
    #[serde(skip)]
    pub blocked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnerRef {
    pub entity: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

#[derive(Serialize)]
struct OrdersFile<'a> {
    run_id: &'a str,
    connector: &'a str,
    generated_at: String,
    orders: Vec<&'a Order>,
}

/// An order file as read back (history anonymization rewrites old files).
#[derive(Serialize, Deserialize)]
pub struct OrdersFileOwned {
    pub run_id: String,
    pub connector: String,
    pub generated_at: String,
    pub orders: Vec<Order>,
}

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let mut phases = super::Phases::new("orders");
    let (ctx, catalog) = session(rc).await?;
    let rts: Vec<&ResourceType> = rc
        .pipeline
        .model
        .resource_types
        .iter()
        .filter(|rt| task.connector.as_ref().is_none_or(|c| *c == rt.connector))
        .collect();
    if rts.is_empty() {
        return Ok(TaskOutcome::skipped("no resource type for this connector"));
    }
    let scope = super::dirty::scope(rc, &ctx, &catalog, task).await?;
    if scope.is_some() {
        // Every input is cut to the owners and accounts in scope.
        crate::engine::filter_while_decoding(&ctx);
    }
    let scope_rows = match &scope {
        Some(sc) => {
            let acted_on = match catalog.tables.contains_key("identity_states") {
                true => Some(
                    ctx.table("identity_states")
                        .await?
                        .filter(col("run_id").eq(lit(rc.run_id.as_str())))?
                        .select(vec![cast(col("account_key"), DataType::Utf8).alias("k")])?,
                ),
                false => None,
            };
            let stored = require(&ctx, &catalog, "correlations", "compute_role_model").await?;
            let rows =
                super::dirty::ScopeRows::new(rc, &ctx, &catalog, sc, stored, acted_on).await?;
            rows.prefetch(rc, &ctx, &catalog, &scope_lookups(rc, &rts))
                .await?;
            Some(rows)
        }
        None => None,
    };
    phases.done("scope");
    let mut orders: Vec<Order> = Vec::new();
    let mut blocked_messages = Vec::new();
    let mut scopes: Vec<DataFrame> = Vec::new();
    for rt in &rts {
        let (mut rt_orders, base, rt_scope) =
            orders_of(rc, &ctx, &catalog, rt, scope.as_ref(), scope_rows.as_ref()).await?;
        scopes.extend(rt_scope);
        // Orders released before (by --force, or under the thresholds) are not held back again
        // while they wait for fulfilment: only the others count, and only they are blocked.
        let mut reason = threshold_reason(rt, rt_orders.iter(), base);
        let mut released = std::collections::HashSet::new();
        if reason.is_some() {
            released = released_orders(&ctx, &catalog, rt).await?;
            reason = threshold_reason(
                rt,
                rt_orders.iter().filter(|o| !released.contains(&o.order_id)),
                base,
            );
        }
        if let Some(reason) = reason {
            if rc.force || task.force {
                tracing::warn!(resource_type = %rt.name, "provisioning threshold overridden: {reason}");
            } else {
                blocked_messages.push(format!("{}: {reason}", rt.name));
                for o in rt_orders
                    .iter_mut()
                    .filter(|o| !released.contains(&o.order_id))
                {
                    o.blocked = true;
                }
            }
        }
        orders.extend(rt_orders);
    }
    orders.sort_by(|a, b| {
        (
            &a.resource_type,
            a.owner.as_ref().map(|o| &o.key).is_none(),
            a.owner.as_ref().map(|o| &o.key),
            a.resource_key.is_none(),
            &a.resource_key,
            &a.change_type,
        )
            .cmp(&(
                &b.resource_type,
                b.owner.as_ref().map(|o| &o.key).is_none(),
                b.owner.as_ref().map(|o| &o.key),
                b.resource_key.is_none(),
                &b.resource_key,
                &b.change_type,
            ))
    });

    phases.done("orders");
    let connectors: Vec<String> = {
        let mut v: Vec<String> = rts.iter().map(|rt| rt.connector.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    // The order files are encoded on other threads while the merge runs: both are CPU work
    // of seconds at 1M identities (165K orders, 115 MB of JSON).
    let orders = Arc::new(orders);
    let files = {
        let (orders, connectors) = (Arc::clone(&orders), connectors.clone());
        let (run_id, dry_run) = (rc.run_id.clone(), rc.dry_run);
        tokio::task::spawn_blocking(move || order_files(&run_id, &connectors, &orders, dry_run))
    };
    // Merge into provisioning_orders.
    let scope_frame = union_all(scopes)?;
    let merged = merge(rc, &ctx, &catalog, &orders, &connectors, scope_frame).await;
    let files = files
        .await
        .map_err(|e| Error::store(format!("encoding the order files: {e}")))?;
    let (table, new_count, inactive) = merged?;
    let emitted: Vec<&Order> = orders.iter().filter(|o| !o.blocked).collect();
    phases.done("merge");

    for (connector, json_bytes, parquet_bytes) in files? {
        if rc.dry_run {
            // Printed for the user; a reader that stopped early does not fail the run.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                String::from_utf8_lossy(&json_bytes)
            );
            continue;
        }
        write_order_file(rc, &connector, "json", json_bytes).await?;
        if let Some(bytes) = parquet_bytes {
            write_order_file(rc, &connector, "parquet", bytes).await?;
        }
    }

    phases.done("files");
    let unknown = values_not_in_exports(rc, &ctx, &catalog, &emitted).await?;
    phases.done("values not in exports");
    let written = commit_tables(
        rc,
        &catalog,
        "task:generate_provisioning_orders",
        vec![table],
    )
    .await?;
    phases.done("commit");
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &emitted {
        *by_type.entry(o.change_type.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_type.iter().map(|(k, v)| format!("{v} {k}")).collect();
    // Orders per connector (the run summary and its notification show them, SPEC 8).
    let mut by_connector: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &emitted {
        *by_connector.entry(o.connector.as_str()).or_default() += 1;
    }
    let per_connector: Vec<String> = by_connector
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let mut message = format!(
        "{} order(s) ({} new, {} no longer needed){}{}{}",
        emitted.len(),
        new_count,
        inactive,
        if counts.is_empty() {
            String::new()
        } else {
            format!(": {}", counts.join(", "))
        },
        if per_connector.is_empty() {
            String::new()
        } else {
            format!("; per connector: {}", per_connector.join(", "))
        },
        if rc.dry_run {
            "; dry run, nothing written".to_string()
        } else {
            String::new()
        }
    );
    let shared = shared_accounts(rc, &ctx, &catalog, &rts).await?;
    if !shared.is_empty() {
        let note = format!(
            "account(s) linked by several resource types get orders from the first in file order only: {}",
            shared.join(", ")
        );
        tracing::warn!("{note}");
        message.push_str(&format!("; {note}"));
    }
    if !unknown.is_empty() {
        let warning = format!(
            "link value(s) not in the exports, emitted anyway: {}",
            unknown.join("; ")
        );
        tracing::warn!("{warning}");
        message.push_str(&format!("; warning: {warning}"));
    }
    if !blocked_messages.is_empty() {
        let held = orders.iter().filter(|o| o.blocked).count();
        message = format!(
            "provisioning blocked: {held} order(s) stored as `blocked` and written to no order file ({}). If the change is intended, re-run with --force. Emitted: {message}",
            blocked_messages.join("; ")
        );
        return Ok(TaskOutcome {
            status: TaskStatus::Blocked,
            rows_read: 0,
            rows_written: written,
            changes: orders.len() as u64,
            message,
            exit_code: exit::BLOCKED,
        });
    }
    Ok(TaskOutcome {
        // Unchanged orders are `no_changes` even with the warning (the message keeps it), as
        // in the role model: a persistent data condition must not make every run eventful.
        status: if new_count == 0 && inactive == 0 {
            TaskStatus::NoChanges
        } else if !unknown.is_empty() {
            TaskStatus::Warning
        } else {
            TaskStatus::Succeeded
        },
        rows_read: 0,
        rows_written: written,
        changes: emitted.len() as u64,
        message,
        exit_code: 0,
    })
}

/// The link values the orders add that are no key of the link's target entity, as
/// `link → entity: value, …` per link (SPEC 11.14: such a value is still desired and emitted, with a
/// warning). The orders' distinct values are few; each link's are anti-joined with the keys.
async fn values_not_in_exports(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    orders: &[&Order],
) -> Result<Vec<String>> {
    const LISTED: usize = 10;
    let mut added: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for o in orders {
        for (link, change) in &o.links {
            added
                .entry(link.as_str())
                .or_default()
                .extend(change.add.iter().map(String::as_str));
        }
    }
    let mut out = Vec::new();
    for (link, values) in added {
        let Some(target) = rc
            .pipeline
            .link(link)
            .and_then(|l| rc.pipeline.entity(&l.to.entity))
        else {
            continue;
        };
        let values = ctx.read_batch(text_batch(&[("_value", values.into_iter().collect())])?)?;
        let missing = match catalog.tables.contains_key(&target.name) {
            true => {
                let keys = ctx.table(target.name.as_str()).await?.select(vec![
                    cast(quoted(&target.key), DataType::Utf8).alias("_key"),
                ])?;
                values.join(keys, JoinType::LeftAnti, &["_value"], &["_key"], None)?
            }
            false => values,
        };
        let batches = missing
            .sort(vec![col("_value").sort(true, true)])?
            .collect()
            .await?;
        let missing: Vec<&str> = batches
            .iter()
            .flat_map(|b| {
                let values = b.column(0).as_any().downcast_ref::<StringArray>();
                values.into_iter().flat_map(|a| a.iter().flatten())
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        let mut listed = missing[..missing.len().min(LISTED)].join(", ");
        if missing.len() > LISTED {
            listed.push_str(&format!(" and {} more", missing.len() - LISTED));
        }
        out.push(format!("{link} → {}: {listed}", target.name));
    }
    Ok(out)
}

/// Deleted and disabled orders count as deletions; the base is the linked accounts.
fn threshold_reason<'a>(
    rt: &ResourceType,
    orders: impl Iterator<Item = &'a Order> + Clone,
    base: u64,
) -> Option<String> {
    let t = &rt.thresholds;
    if base < t.min_rows || base == 0 {
        return None;
    }
    let count = |kinds: &[&str]| {
        orders
            .clone()
            .filter(|o| kinds.contains(&o.kind.as_str()))
            .count() as u64
    };
    let pct = |n: u64| n as f64 * 100.0 / base as f64;
    let deleted = count(&["deleted", "disabled"]);
    let added = count(&["added"]);
    let modified = count(&["modified"]);
    // Orphans deleted or disabled count too (a broken classification rule must not delete a
    // directory's unlinked accounts either), against the linked accounts as the base.
    let orphans = orders
        .clone()
        .filter(|o| matches!(o.kind.as_str(), "deleted" | "disabled") && o.owner.is_none())
        .count();
    let deletions = if orphans == 0 {
        format!("{deleted} of {base} linked accounts deleted or disabled")
    } else {
        format!(
            "{deleted} accounts deleted or disabled, {orphans} of them orphans, against {base} linked accounts"
        )
    };
    let mut reasons = Vec::new();
    if pct(deleted) > t.max_deleted_percent {
        reasons.push(format!(
            "{deletions} ({:.1}% > max_deleted_percent {})",
            pct(deleted),
            t.max_deleted_percent
        ));
    }
    if let Some(max) = t.max_deleted
        && deleted > max
    {
        reasons.push(format!(
            "{deletions} ({:.1}%, > max_deleted {max})",
            pct(deleted)
        ));
    }
    if let Some(max) = t.max_added_percent
        && pct(added) > max
    {
        reasons.push(format!(
            "{added} accounts added for {base} linked ({:.1}% > max_added_percent {max})",
            pct(added)
        ));
    }
    if let Some(max) = t.max_modified_percent
        && pct(modified) > max
    {
        reasons.push(format!(
            "{modified} of {base} linked accounts modified ({:.1}% > max_modified_percent {max})",
            pct(modified)
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The ids of the resource type's orders in `provisioning_orders` that were released (any
/// state but `blocked` and `inactive`).
async fn released_orders(
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
) -> Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    if !catalog.tables.contains_key(TABLE) {
        return Ok(ids);
    }
    let batches = ctx
        .table(TABLE)
        .await?
        .filter(
            col("resource_type")
                .eq(lit(rt.name.as_str()))
                .and(col("state").in_list(vec![lit("blocked"), lit("inactive")], true)),
        )?
        .select(vec![cast(col("order_id"), DataType::Utf8)])?
        .collect()
        .await?;
    for b in &batches {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            ids.extend(a.iter().flatten().map(str::to_string));
        }
    }
    Ok(ids)
}

/// The tables and columns [`orders_of`] looks the scope's rows up in, for every resource type
/// of `rts`: found at once beforehand ([`super::dirty::ScopeRows::prefetch`]).
fn scope_lookups(rc: &RunContext<'_>, rts: &[&ResourceType]) -> Vec<(String, String, Side)> {
    let mut wanted = Vec::new();
    let mut add = |table: &str, on: &str, side: Side| {
        wanted.push((table.to_string(), on.to_string(), side));
    };
    for rt in rts {
        let target = rc
            .pipeline
            .entity(&rt.target)
            .expect("invariant: validated");
        let owner = rc.pipeline.entity(&rt.owner).expect("invariant: validated");
        for table in ["assigned_resources", "assigned_scalars", "assigned_links"] {
            add(table, "owner_key", Side::Owners);
        }
        add(&rt.target, &target.key, Side::Accounts);
        add("classification", "account_key", Side::Accounts);
        for l in &rt.links {
            let link = rc.pipeline.link(&l.link).expect("invariant: validated");
            add(&l.link, &link.from.column, Side::Accounts);
        }
        add(&rt.owner, &owner.key, Side::Owners);
    }
    wanted
}

/// Per target entity of several resource types among `rts`: how many accounts more than one of
/// them links, as `N of <target> (<type>, <type>…)` (SPEC 11.15: the first in file order gives
/// their orders). Nothing is read for a pipeline with one resource type per target.
async fn shared_accounts(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rts: &[&ResourceType],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let targets: BTreeSet<&str> = rts.iter().map(|rt| rt.target.as_str()).collect();
    for target in targets {
        let names: Vec<&str> = rc
            .pipeline
            .model
            .resource_types
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.name.as_str())
            .collect();
        if names.len() < 2 || !catalog.tables.contains_key("correlations") {
            continue;
        }
        let of_target = names.iter().map(|n| lit(*n)).collect();
        let linked = col("status").eq(lit("linked"));
        let n = ctx
            .table("correlations")
            .await?
            .filter(linked.and(col("resource_type").in_list(of_target, false)))?
            .aggregate(
                vec![col("account_key")],
                vec![count(col("resource_type")).alias("n")],
            )?
            .filter(col("n").gt(lit(1i64)))?
            .count()
            .await?;
        if n > 0 {
            out.push(format!("{n} of {target} ({})", names.join(", ")));
        }
    }
    Ok(out)
}

/// The resource types before `rt` in file order with the same target entity, as literals.
fn earlier_types(rc: &RunContext<'_>, rt: &ResourceType) -> Vec<Expr> {
    rc.pipeline
        .model
        .resource_types
        .iter()
        .take_while(|r| r.name != rt.name)
        .filter(|r| r.target == rt.target)
        .map(|r| lit(r.name.as_str()))
        .collect()
}

/// The orders of one resource type and its number of linked accounts.
async fn orders_of(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
    scope: Option<&super::dirty::Scope>,
    scope_rows: Option<&super::dirty::ScopeRows>,
) -> Result<(Vec<Order>, u64, Option<DataFrame>)> {
    let target_entity = rc
        .pipeline
        .entity(&rt.target)
        .expect("invariant: validated");
    let owner_entity = rc.pipeline.entity(&rt.owner).expect("invariant: validated");
    let mut phases = super::Phases::new("orders");
    let rt_name = lit(rt.name.as_str());
    let of_rt = |df: DataFrame| df.filter(col("resource_type").eq(rt_name.clone()));

    let assigned_table = require(ctx, catalog, "assigned_resources", "compute_role_model").await?;
    let assigned = of_rt(assigned_table.clone())?;
    let correlations = of_rt(require(ctx, catalog, "correlations", "compute_role_model").await?)?;
    let linked = correlations
        .clone()
        .filter(col("status").eq(lit("linked")))?
        .select(vec![col("account_key"), col("owner_key")])?;
    let base = linked.clone().count().await? as u64;
    // Dirty: only the changed owners and accounts, each with its counterpart (an owner's linked
    // accounts, an account's owner), so every order in scope is computed from complete inputs.
    let mut assigned = assigned;
    let mut linked = linked;
    let mut in_scope: Option<(DataFrame, DataFrame)> = None;
    // Dirty: the statuses of the accounts in scope.
    let mut statuses: Option<DataFrame> = None;
    if let Some(sc) = scope {
        let d_owners = sc
            .owners
            .clone()
            .filter(col("entity").eq(lit(rt.owner.as_str())))?
            .select(vec![col("key").alias("k")])?;
        let mut d_accounts = sc
            .accounts
            .clone()
            .filter(col("entity").eq(lit(rt.target.as_str())))?
            .select(vec![col("key").alias("k")])?;
        // Accounts update_identities acted on in this run (deactivated, reactivated, their
        // anonymization started) get their orders now, as a complete run would give them.
        if catalog.tables.contains_key("identity_states") {
            d_accounts = d_accounts.union(
                ctx.table("identity_states")
                    .await?
                    .filter(
                        col("resource_type")
                            .eq(rt_name.clone())
                            .and(col("run_id").eq(lit(rc.run_id.as_str()))),
                    )?
                    .select(vec![cast(col("account_key"), DataType::Utf8).alias("k")])?,
            )?;
        }
        // The correlation rows of the changed accounts, then every linked row of the owners
        // in scope, found by key in the store (semi joins read `correlations` four times). An
        // account has one row per resource type, and every linked account of the scope's
        // accounts has its owner in scope.
        let rows = scope_rows.expect("with a scope");
        let stored = require(ctx, catalog, "correlations", "compute_role_model").await?;
        let d_accounts = super::role_model::materialize(ctx, d_accounts).await?;
        let of_changed = of_rt(
            rows.rows(
                rc,
                ctx,
                catalog,
                "correlations",
                stored.clone(),
                "account_key",
                Side::Changed,
                &d_accounts,
            )
            .await?,
        )?;
        let of_changed = super::role_model::materialize(ctx, of_changed).await?;
        let owners_of_accounts = super::dirty::linked_keys(of_changed.clone(), "owner_key")?;
        let scope_owners =
            super::role_model::materialize(ctx, d_owners.union(owners_of_accounts)?.distinct()?)
                .await?;
        let of_owners = of_rt(
            rows.rows(
                rc,
                ctx,
                catalog,
                "correlations",
                stored,
                "owner_key",
                Side::Owners,
                &scope_owners,
            )
            .await?,
        )?
        .filter(col("status").eq(lit("linked")))?;
        let of_owners = super::role_model::materialize(ctx, of_owners).await?;
        let accounts_of_owners = of_owners
            .clone()
            .select(vec![col("account_key").alias("k")])?;
        let scope_accounts =
            super::role_model::materialize(ctx, d_accounts.union(accounts_of_owners)?.distinct()?)
                .await?;
        assigned = of_rt(
            rows.rows(
                rc,
                ctx,
                catalog,
                "assigned_resources",
                assigned_table,
                "owner_key",
                Side::Owners,
                &scope_owners,
            )
            .await?,
        )?;
        linked = of_owners
            .clone()
            .select(vec![col("account_key"), col("owner_key")])?;
        statuses = Some(
            of_changed
                .select(vec![col("account_key"), col("status")])?
                .union(of_owners.select(vec![col("account_key"), col("status")])?)?
                .distinct()?,
        );
        in_scope = Some((scope_owners, scope_accounts));
    }
    // In dirty mode every per-owner and per-account input is cut to the scope before the
    // diffs join them (otherwise each join still reads the whole link tables), and collected
    // once: every piece of the orders query reads them again.
    let dirty = in_scope.is_some();
    // A role-model table's `owner_key`, `column`, `value` of this resource type, cut to the
    // owners in scope (found by key in the store).
    let desired = async |table: &str, column: &str| -> Result<DataFrame> {
        let df = require(ctx, catalog, table, "compute_role_model").await?;
        let df = match (&in_scope, scope_rows) {
            (Some((owners, _)), Some(rows)) => {
                let on = "owner_key";
                rows.rows(rc, ctx, catalog, table, df, on, Side::Owners, owners)
                    .await?
            }
            _ => df,
        };
        Ok(of_rt(df)?.select(vec![col("owner_key"), col(column), col("value")])?)
    };
    // A stored table's rows of the accounts in scope, found by key in the store.
    let of_accounts_keyed = async |name: &str, df: DataFrame, on: &str| -> Result<DataFrame> {
        match (&in_scope, scope_rows) {
            (Some((_, accounts)), Some(rows)) => {
                rows.rows(rc, ctx, catalog, name, df, on, Side::Accounts, accounts)
                    .await
            }
            _ => Ok(df),
        }
    };
    view(
        ctx,
        "o_assigned",
        scoped(
            ctx,
            dirty,
            assigned.select(vec![col("owner_key"), col("account_key"), col("state")])?,
        )
        .await?,
    )?;
    view(ctx, "o_linked", scoped(ctx, dirty, linked.clone()).await?)?;
    // SPEC 11.15: an account that several resource types link is the first one's in file
    // order, as its class is. A later resource type gives it no order: one would update it,
    // another delete or disable it.
    let earlier = earlier_types(rc, rt);
    let claimed = if earlier.is_empty() {
        empty(
            ctx,
            Arc::new(Schema::new(vec![Field::new(
                "account_key",
                DataType::Utf8,
                true,
            )])),
        )?
    } else {
        require(ctx, catalog, "correlations", "compute_role_model")
            .await?
            .filter(
                col("status")
                    .eq(lit("linked"))
                    .and(col("resource_type").in_list(earlier, false)),
            )?
            .select(vec![
                cast(col("account_key"), DataType::Utf8).alias("_claimed"),
            ])?
            .distinct()?
            .join(
                ctx.table("o_linked").await?,
                JoinType::Inner,
                &["_claimed"],
                &["account_key"],
                None,
            )?
            .select(vec![col("_claimed").alias("account_key")])?
    };
    view(
        ctx,
        "o_claimed",
        super::role_model::materialize(ctx, claimed).await?,
    )?;

    let target = require(ctx, catalog, &rt.target, "synchronize").await?;
    let account_key = cast(quoted(&target_entity.key), DataType::Utf8);
    // Dirty: the target rows of the accounts in scope, read once for the accounts and every
    // column below (cut column by column, each would scan the whole target table again).
    let scoped_target = match &in_scope {
        Some(_) => {
            let rows = of_accounts_keyed(&rt.target, target.clone(), &target_entity.key).await?;
            super::role_model::materialize(ctx, rows).await?
        }
        None => target.clone(),
    };
    let accounts = scoped_target
        .clone()
        .select(vec![account_key.clone().alias("account_key")])?;
    let classes = if catalog.tables.contains_key("classification") {
        let stored = ctx.table("classification").await?;
        // Dirty: cut before the joins (built on the 1.1M classified accounts and correlations
        // at 1M identities, the two joins took 0.4 s of a dirty run's 2.5 s of orders).
        of_accounts_keyed("classification", stored, "account_key")
            .await?
            .filter(col("entity").eq(lit(rt.target.as_str())))?
            .select(vec![
                col("account_key").alias("_ck"),
                col("class"),
                col("protect"),
            ])?
    } else {
        // Without classification nothing is an orphan and nothing is protected.
        empty(
            ctx,
            Arc::new(Schema::new(vec![
                Field::new("_ck", DataType::Utf8, true),
                Field::new("class", DataType::Utf8, true),
                Field::new("protect", DataType::Boolean, true),
            ])),
        )?
    };
    let statuses = statuses
        .unwrap_or(correlations)
        .select(vec![col("account_key").alias("_sk"), col("status")])?;
    view(
        ctx,
        "o_accounts",
        scoped(
            ctx,
            dirty,
            accounts
                .join(classes, JoinType::Left, &["account_key"], &["_ck"], None)?
                .join(statuses, JoinType::Left, &["account_key"], &["_sk"], None)?
                .select(vec![
                    col("account_key"),
                    col("class"),
                    coalesce_bool(col("protect")).alias("protect"),
                    col("status"),
                ])?,
        )
        .await?,
    )?;
    view(
        ctx,
        "o_desired_scalars",
        scoped(ctx, dirty, desired("assigned_scalars", "attribute").await?).await?,
    )?;
    // Values update_identities computed for accounts under anonymization (status 3 or 4):
    // they win over the role model's, which knows only the owner's real data until the
    // owner is scrubbed (status 5). And the changed values of accounts the role model does
    // not keep (a deleted owner's account under `update_when_owner_disabled`, SPEC 9 case 3):
    // nothing else carries their update to the target.
    let identity =
        if catalog.tables.contains_key("identity_updates")
            && catalog.tables.contains_key("identity_states")
        {
            let started =
                ctx.table("identity_states")
                    .await?
                    .filter(col("resource_type").eq(lit(rt.name.as_str())).and(
                        col("anonymization_status").in_list(vec![lit(3i64), lit(4i64)], false),
                    ))?
                    .select(vec![col("account_key").alias("_ik")])?;
            let updates = ctx
                .table("identity_updates")
                .await?
                .filter(col("resource_type").eq(lit(rt.name.as_str())))?;
            let values = || {
                vec![
                    col("account_key"),
                    col("attribute"),
                    col("serialized_value").alias("value"),
                ]
            };
            let anonymizing = updates
                .clone()
                .join(
                    started.clone(),
                    JoinType::LeftSemi,
                    &["account_key"],
                    &["_ik"],
                    None,
                )?
                .select(values())?;
            // The changed values first (few), then the accounts kept and those under
            // anonymization left out.
            let kept = ctx
                .table("o_assigned")
                .await?
                .filter(col("account_key").is_not_null())?
                .select(vec![cast(col("account_key"), DataType::Utf8).alias("_kk")])?;
            let not_kept = updates
                .filter(col("has_changed").is_true())?
                .join(
                    started,
                    JoinType::LeftAnti,
                    &["account_key"],
                    &["_ik"],
                    None,
                )?
                .join(kept, JoinType::LeftAnti, &["account_key"], &["_kk"], None)?
                .select(values())?;
            Some(anonymizing.union(not_kept)?)
        } else {
            None
        };
    // Collected once (it is small): every piece of the orders query reads it.
    view(
        ctx,
        "o_identity_updates",
        super::role_model::materialize(
            ctx,
            or_empty_utf8(ctx, identity, &["account_key", "attribute", "value"])?,
        )
        .await?,
    )?;
    // Accounts the lifecycle keeps inactive: their `disable` values win over the role model's
    // desired ones, so that a desired `enabled = true` does not re-enable them.
    let mut deactivated = Vec::new();
    if catalog.tables.contains_key("identity_states") {
        // Deactivated by update_identities (owner suspended, or deleted in its base filter).
        deactivated.push(
            ctx.table("identity_states")
                .await?
                .filter(
                    col("resource_type")
                        .eq(lit(rt.name.as_str()))
                        .and(col("active").is_false()),
                )?
                .select(vec![
                    cast(col("account_key"), DataType::Utf8).alias("account_key"),
                ])?,
        );
    }
    if let Some(inactive) =
        kept_inactive(rc, ctx, catalog, rt, &target, &account_key, &linked).await?
    {
        deactivated.push(inactive);
    }
    view(
        ctx,
        "o_deactivated",
        or_empty_utf8(ctx, union_all(deactivated)?, &["account_key"])?,
    )?;
    view(
        ctx,
        "o_desired_links",
        scoped(ctx, dirty, desired("assigned_links", "link").await?).await?,
    )?;

    // Current values of the scalar and disable columns, as text of the column type. Not those
    // of create_only attributes (never compared), unless a disable value sets them.
    let mut columns: Vec<&str> = rt
        .scalars
        .iter()
        .map(|(c, _)| c.as_str())
        .filter(|c| !rt.create_only.iter().any(|o| o == c))
        .collect();
    for (c, _) in &rt.disable {
        if !columns.contains(&c.as_str()) {
            columns.push(c);
        }
    }
    let mut current = Vec::new();
    for c in &columns {
        current.push(scoped_target.clone().select(vec![
            account_key.clone().alias("account_key"),
            lit(*c).alias("attribute"),
            cast(quoted(c), DataType::Utf8).alias("value"),
        ])?);
    }
    view(
        ctx,
        "o_current_scalars",
        scoped(
            ctx,
            dirty,
            or_empty_utf8(
                ctx,
                union_all(current)?,
                &["account_key", "attribute", "value"],
            )?,
        )
        .await?,
    )?;

    // Current link values of the resource type's links.
    let mut current_links = Vec::new();
    for l in &rt.links {
        let link = rc.pipeline.link(&l.link).expect("invariant: validated");
        if !catalog.tables.contains_key(&l.link) {
            continue;
        }
        let stored = ctx.table(l.link.as_str()).await?;
        let stored = of_accounts_keyed(l.link.as_str(), stored, &link.from.column).await?;
        current_links.push(stored.select(vec![
            cast(quoted(&link.from.column), DataType::Utf8).alias("account_key"),
            lit(l.link.as_str()).alias("link"),
            cast(quoted(&link.to.column), DataType::Utf8).alias("value"),
        ])?);
    }
    view(
        ctx,
        "o_current_links",
        scoped(
            ctx,
            dirty,
            or_empty_utf8(
                ctx,
                union_all(current_links)?,
                &["account_key", "link", "value"],
            )?,
        )
        .await?,
    )?;

    // Disable values: expressions over the owner (NULL columns when the owner is gone).
    let owner_key_expr = cast(quoted(&owner_entity.key), DataType::Utf8);
    let owners = require(ctx, catalog, &rt.owner, "synchronize").await?;
    // Dirty: the linked owners of the accounts in scope are in scope.
    let owners = match (&in_scope, scope_rows) {
        (Some((scope_owners, _)), Some(rows)) => {
            let (name, key) = (rt.owner.as_str(), owner_entity.key.as_str());
            rows.rows(
                rc,
                ctx,
                catalog,
                name,
                owners,
                key,
                Side::Owners,
                scope_owners,
            )
            .await?
        }
        _ => owners,
    };
    let with_owner = scoped_target
        .select(vec![account_key.clone().alias("_account_key")])?
        .join(
            linked.select(vec![
                col("account_key").alias("_lk"),
                col("owner_key").alias("_lo"),
            ])?,
            JoinType::Left,
            &["_account_key"],
            &["_lk"],
            None,
        )?
        .join(
            owners.with_column("_ok", owner_key_expr)?,
            JoinType::Left,
            &["_lo"],
            &["_ok"],
            None,
        )?;
    let mut disable = Vec::new();
    for (c, e) in &rt.disable {
        let value = ctx.parse_sql_expr(&e.text, with_owner.schema())?;
        disable.push(with_owner.clone().select(vec![
                col("_account_key").alias("account_key"),
                lit(c.as_str()).alias("attribute"),
                cast(
                    try_cast(value, super::role_model::target_type(rc, rt, c)),
                    DataType::Utf8,
                )
                .alias("value"),
            ])?);
    }
    view(
        ctx,
        "o_disable",
        scoped(
            ctx,
            dirty,
            or_empty_utf8(
                ctx,
                union_all(disable)?,
                &["account_key", "attribute", "value"],
            )?,
        )
        .await?,
    )?;

    // Configuration: managed values, link modes, create_only, policy.
    let (mut m_links, mut m_values) = (Vec::new(), Vec::new());
    let (mut modes_link, mut modes) = (Vec::new(), Vec::new());
    for l in &rt.links {
        modes_link.push(l.link.as_str());
        modes.push(match l.managed {
            Managed::Rules => "rules",
            Managed::All => "all",
        });
        for v in &l.values {
            m_links.push(l.link.as_str());
            m_values.push(v.target.as_str());
        }
    }
    view(
        ctx,
        "o_managed",
        ctx.read_batch(text_batch(&[("link", m_links), ("value", m_values)])?)?,
    )?;
    view(
        ctx,
        "o_link_modes",
        ctx.read_batch(text_batch(&[("link", modes_link), ("managed", modes)])?)?,
    )?;
    // The current link values the resource type may remove (see sql/link_candidates.sql).
    let mut may_remove = Vec::new();
    for l in &rt.links {
        let of_link = col("link").eq(lit(l.link.as_str()));
        match l.managed {
            Managed::All => may_remove.push(of_link),
            Managed::Rules if !l.values.is_empty() => {
                let values = l.values.iter().map(|v| lit(v.target.as_str())).collect();
                may_remove.push(of_link.and(col("value").in_list(values, false)));
            }
            Managed::Rules => {}
        }
    }
    let may_remove = may_remove
        .into_iter()
        .reduce(Expr::or)
        .unwrap_or(lit(false));
    view(
        ctx,
        "o_removable_links",
        ctx.table("o_current_links").await?.filter(may_remove)?,
    )?;
    let create_only: Vec<&str> = rt.create_only.iter().map(String::as_str).collect();
    view(
        ctx,
        "o_create_only",
        ctx.read_batch(text_batch(&[("attribute", create_only)])?)?,
    )?;
    view(
        ctx,
        "o_policy",
        ctx.read_batch(text_batch(&[
            ("on_lost", vec![rt.on_lost.name()]),
            ("orphans", vec![orphan_policy(rc, rt).name()]),
        ])?)?,
    )?;

    phases.done(&format!("{}: inputs", rt.name));
    // The owners who get an account, collected: few, and known to be few, the joins that give
    // their attributes and links build on them instead of hashing all of assigned_scalars and
    // assigned_links into partitions (at 1M identities, 29K owners: their links took 2.3-3.1 s).
    let added = ctx
        .table("o_assigned")
        .await?
        .filter(
            col("account_key")
                .is_null()
                .and(col("state").eq(lit("assigned"))),
        )?
        .select(vec![col("owner_key")])?;
    view(
        ctx,
        "o_added",
        super::role_model::materialize(ctx, added).await?,
    )?;
    let candidates =
        super::role_model::materialize(ctx, ctx.sql(LINK_CANDIDATES_SQL).await?).await?;
    view(ctx, "o_link_candidates", candidates.clone())?;
    // The current and desired links of the candidate pairs, each read once for both link
    // pieces (each would scan the whole link table and assigned_links again). They are no
    // larger than those pieces' results, which are collected too.
    let of_candidates = |links: DataFrame, on: &str| -> Result<DataFrame> {
        links.semi_on(on, candidates.clone().select(vec![col(on).alias("k")])?)
    };
    let current = of_candidates(ctx.table("o_current_links").await?, "account_key")?;
    let desired = of_candidates(ctx.table("o_desired_links").await?, "owner_key")?;
    view(
        ctx,
        "o_candidate_current_links",
        super::role_model::materialize(ctx, current).await?,
    )?;
    view(
        ctx,
        "o_candidate_desired_links",
        super::role_model::materialize(ctx, desired).await?,
    )?;
    phases.done(&format!("{}: link candidates", rt.name));
    let text = |n: &&str| -> Expr { cast(col(*n), DataType::Utf8).alias(*n) };
    let columns = [
        "change_type",
        "kind",
        "owner_key",
        "account_key",
        "part",
        "name",
        "old_value",
        "new_value",
    ]
    .iter()
    .map(text)
    .collect::<Vec<Expr>>();
    // The protected accounts, collected once: every piece leaves them out (computed in each,
    // they joined every target account with its class and correlation again: 0.2-0.3 s a
    // piece at 1M identities).
    let protected = ctx
        .sql(&format!("{ORDERS_SQL}SELECT account_key FROM protected"))
        .await?;
    view(
        ctx,
        "o_protected",
        super::role_model::materialize(ctx, protected).await?,
    )?;
    // Each piece (see sql/orders.sql) materialized. A whole run computes one at a time: each
    // keeps both cores busy, and together they would hold every piece's hash tables at once.
    // A dirty run's pieces are small queries (thousands of rows, 10-40 ms each at 1M
    // identities), each planned and run mostly on one core: they run together.
    let piece = |piece: &'static str| {
        let columns = columns.clone();
        async move {
            let sql = format!(
                "{ORDERS_SQL}SELECT p.* FROM {piece} p \
                 LEFT JOIN o_protected x ON x.account_key = p.account_key \
                 WHERE x.account_key IS NULL"
            );
            let mut df = ctx.sql(&sql).await?.select(columns)?;
            if piece == "part_scalars" {
                // Its hash tables are the small sides as written (see sql/orders.sql): by its
                // estimates DataFusion would build 4.7M desired values instead (at 1M
                // identities).
                df = crate::engine::as_written(df);
            }
            super::role_model::materialize(ctx, df).await
        }
    };
    let mut pieces = Vec::new();
    if dirty {
        pieces = futures::future::try_join_all(order_pieces().map(piece)).await?;
        phases.done(&format!("{}: pieces", rt.name));
    } else {
        for p in order_pieces() {
            pieces.push(piece(p).await?);
            phases.done(&format!("{}: {p}", rt.name));
        }
    }
    let parts = union_all(pieces)?.expect("invariant: orders.sql has pieces");
    // The header part of each Modified order (see sql/orders.sql).
    let null = || cast(lit(ScalarValue::Null), DataType::Utf8);
    // Distinct before the constant columns: DataFusion 55 takes a literal grouping column for
    // a sort order and aggregates in a (much slower) partially sorted mode.
    let headers = parts
        .clone()
        .filter(col("change_type").eq(lit("Modified")))?
        .select(vec![
            col("change_type"),
            col("kind"),
            col("owner_key"),
            col("account_key"),
        ])?
        .distinct()?
        .select(vec![
            col("change_type"),
            col("kind"),
            col("owner_key"),
            col("account_key"),
            lit("order").alias("part"),
            null().alias("name"),
            null().alias("old_value"),
            null().alias("new_value"),
        ])?;
    let parts = parts
        .union(headers)?
        .sort(vec![
            col("owner_key").sort(true, false),
            col("account_key").sort(true, true),
            col("change_type").sort(true, true),
            col("kind").sort(true, true),
            col("part").sort(true, true),
            col("name").sort(true, true),
            col("old_value").sort(true, true),
            col("new_value").sort(true, true),
        ])?
        .collect()
        .await?;
    phases.done(&format!("{}: headers and sort", rt.name));
    let scope_frame = match in_scope {
        Some((owners, accounts)) => Some(
            owners
                .select(vec![
                    lit(rt.name.as_str()).alias("resource_type"),
                    lit("owner").alias("kind"),
                    col("k"),
                ])?
                .union(accounts.select(vec![
                    lit(rt.name.as_str()).alias("resource_type"),
                    lit("account").alias("kind"),
                    col("k"),
                ])?)?,
        ),
        None => None,
    };
    let orders = assemble(rc, rt, &parts);
    phases.done(&format!("{}: assemble", rt.name));
    Ok((orders, base, scope_frame))
}

/// The CTEs of `sql/orders.sql` that each yield one kind of order part (`part_… AS (`).
fn order_pieces() -> impl Iterator<Item = &'static str> {
    ORDERS_SQL
        .lines()
        .filter_map(|l| l.strip_suffix(" AS ("))
        .filter(|name| name.starts_with("part_"))
}

/// `df` collected when `dirty` (cut to the scope, it is small), else as it is.
/// Linked accounts that are inactive in the target and that SPEC 9 leaves inactive: the
/// owner is suspended (no reactivation), or somebody deactivated the account by hand
/// (`deactivated_by`). `None` unless the resource type's lifecycle has the update feature and
/// an `active` expression.
async fn kept_inactive(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
    target: &DataFrame,
    account_key: &Expr,
    linked: &DataFrame,
) -> Result<Option<DataFrame>> {
    let (Some(lc), Some(l)) = (&rc.pipeline.model.lifecycle, &rt.lifecycle) else {
        return Ok(None);
    };
    let connector_update = rc
        .pipeline
        .connectors
        .get(&rt.connector)
        .is_some_and(|c| c.update);
    if lc.owner != rt.owner
        || !l.update
        || !connector_update
        || !catalog.tables.contains_key(&lc.owner)
    {
        return Ok(None);
    }
    let Some(active) = &l.active else {
        return Ok(None);
    };
    let active = ctx.parse_sql_expr(&active.text, target.schema())?;
    let deactivated_by = match &l.deactivated_by {
        Some(e) => ctx.parse_sql_expr(&e.text, target.schema())?,
        None => cast(lit(ScalarValue::Null), DataType::Utf8),
    };
    let owner_entity = rc.pipeline.entity(&lc.owner).expect("invariant: validated");
    let owners = ctx.table(lc.owner.as_str()).await?;
    let state = ctx.parse_sql_expr(&lc.state.text, owners.schema())?;
    let owners = owners.select(vec![
        cast(quoted(&owner_entity.key), DataType::Utf8).alias("_kio"),
        try_cast(state, DataType::Int64).alias("_kis"),
    ])?;
    let inactive = target
        .clone()
        .select(vec![
            account_key.clone().alias("_kia"),
            coalesce_bool(active).alias("_active"),
            deactivated_by.is_not_null().alias("_by_hand"),
        ])?
        .filter(col("_active").not())?
        .join(
            linked
                .clone()
                .select(vec![col("account_key"), col("owner_key")])?,
            JoinType::Inner,
            &["_kia"],
            &["account_key"],
            None,
        )?
        .join(owners, JoinType::Inner, &["owner_key"], &["_kio"], None)?
        .filter(col("_kis").eq(lit(3i64)).or(col("_by_hand")))?
        .select(vec![col("_kia").alias("account_key")])?;
    Ok(Some(inactive))
}

async fn scoped(ctx: &SessionContext, dirty: bool, df: DataFrame) -> Result<DataFrame> {
    if dirty {
        super::role_model::materialize(ctx, df).await
    } else {
        Ok(df)
    }
}

fn coalesce_bool(e: Expr) -> Expr {
    datafusion::functions::core::expr_fn::coalesce(vec![e, lit(ScalarValue::Boolean(Some(false)))])
}

fn or_empty_utf8(ctx: &SessionContext, df: Option<DataFrame>, names: &[&str]) -> Result<DataFrame> {
    match df {
        Some(df) => Ok(df),
        None => empty(
            ctx,
            Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            )),
        ),
    }
}

/// The orphan policy this resource type applies. An orphan is an account of the target entity
/// that no resource type links and no classification rule names, so it is an orphan for every
/// resource type of that entity: the first of them in file order whose `orphans` is not `keep`
/// handles it, the later ones keep it — one order per orphan, never a Deleted order from one
/// resource type and a disable from another.
fn orphan_policy(rc: &RunContext<'_>, rt: &ResourceType) -> LostAction {
    let earlier = rc
        .pipeline
        .model
        .resource_types
        .iter()
        .take_while(|o| o.name != rt.name)
        .any(|o| o.target == rt.target && o.orphans != LostAction::Keep);
    if earlier {
        LostAction::Keep
    } else {
        rt.orphans
    }
}

/// Shapes sorted order parts into orders (output formatting over the result set).
fn assemble(rc: &RunContext<'_>, rt: &ResourceType, parts: &[RecordBatch]) -> Vec<Order> {
    let target = rc
        .pipeline
        .entity(&rt.target)
        .expect("invariant: validated");
    let types: HashMap<&str, ColumnType> = target
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty))
        .collect();
    let key_scalar = rt
        .scalars
        .iter()
        .any(|(c, _)| *c == target.key)
        .then_some(target.key.as_str());
    let mut orders: Vec<Order> = Vec::new();
    // An order's id: change type, owner and account.
    type Id = (String, Option<String>, Option<String>);
    let mut index: HashMap<Id, usize> = HashMap::new();
    // The id of the row before and its order's position.
    let mut previous: Option<(Id, usize)> = None;
    for b in parts {
        let get = |name: &str| -> &StringArray {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("invariant: orders.sql returns text columns")
        };
        let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        let (change, kind, owner, account, part, name, old, new) = (
            get("change_type"),
            get("kind"),
            get("owner_key"),
            get("account_key"),
            get("part"),
            get("name"),
            get("old_value"),
            get("new_value"),
        );
        let same = |a: &StringArray, i: usize, b: Option<&String>| match b {
            Some(b) => a.is_valid(i) && a.value(i) == b,
            None => a.is_null(i),
        };
        for i in 0..b.num_rows() {
            // One order per change type, owner and account: a Modified order with a part of
            // kind `disabled` (a deactivation's value) is a disabling order as a whole.
            let part_kind = kind.value(i);
            // The parts come sorted by owner and account: most rows belong to the order of
            // the row before, found without building and hashing its id.
            let at = match &previous {
                Some(((c, o, a), at))
                    if c == change.value(i)
                        && same(owner, i, o.as_ref())
                        && same(account, i, a.as_ref()) =>
                {
                    *at
                }
                _ => {
                    let id = (change.value(i).to_string(), opt(owner, i), opt(account, i));
                    let at = *index.entry(id.clone()).or_insert_with(|| {
                        orders.push(Order {
                            order_id: String::new(),
                            change_type: id.0.clone(),
                            resource_type: rt.name.clone(),
                            entity: rt.target.clone(),
                            owner: id.1.clone().map(|key| OwnerRef {
                                entity: rt.owner.clone(),
                                key,
                            }),
                            resource_key: id.2.clone(),
                            attributes: BTreeMap::new(),
                            links: BTreeMap::new(),
                            connector: rt.connector.clone(),
                            kind: part_kind.to_string(),
                            account_key: id.2.clone(),
                            blocked: false,
                        });
                        orders.len() - 1
                    });
                    previous = Some((id, at));
                    at
                }
            };
            let order = &mut orders[at];
            if part_kind == "disabled" {
                order.kind = part_kind.to_string();
            }
            match part.value(i) {
                "attribute" => {
                    let attr = name.value(i);
                    let ty = types.get(attr).copied().unwrap_or(ColumnType::String);
                    let new_value = opt(new, i);
                    if order.change_type == "Added" && Some(attr) == key_scalar {
                        // The account to create: `provisioning_orders.account_key` names it as
                        // the file's `resource_key` does.
                        order.resource_key = new_value.clone();
                        order.account_key = new_value.clone();
                    }
                    order.attributes.insert(
                        attr.to_string(),
                        Change {
                            old: typed(ty, opt(old, i).as_deref()),
                            new: typed(ty, new_value.as_deref()),
                        },
                    );
                }
                "add" => order
                    .links
                    .entry(name.value(i).to_string())
                    .or_default()
                    .add
                    .push(new.value(i).to_string()),
                "remove" => order
                    .links
                    .entry(name.value(i).to_string())
                    .or_default()
                    .remove
                    .push(old.value(i).to_string()),
                _ => {}
            }
        }
    }
    // Ids (a SHA-256 of each order's JSON) on all cores.
    let per = orders.len().div_ceil(crate::engine::threads()).max(1);
    crate::engine::on_threads(orders.chunks_mut(per), |chunk| {
        for o in chunk {
            for l in o.links.values_mut() {
                l.add.sort();
                l.add.dedup();
                l.remove.sort();
                l.remove.dedup();
            }
            o.order_id = order_id(o);
        }
    });
    orders
}

/// A JSON value of the target column's type (SPEC 11.10).
fn typed(ty: ColumnType, v: Option<&str>) -> Value {
    let Some(v) = v else { return Value::Null };
    match ty {
        ColumnType::Int => v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(v)),
        ColumnType::Float => v
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .unwrap_or_else(|| json!(v)),
        ColumnType::Bool => match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => json!(v),
        },
        ColumnType::Timestamp => chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| {
                json!(
                    t.with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                )
            })
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").map(|t| {
                    json!(
                        t.and_utc()
                            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    )
                })
            })
            .unwrap_or_else(|_| json!(v)),
        ColumnType::String | ColumnType::Date => json!(v),
    }
}

/// The first 16 hex digits of the SHA-256 of the order's content (without its id): the same
/// order in a later run has the same id.
fn order_id(o: &Order) -> String {
    let content = json!({
        "connector": o.connector,
        "resource_type": o.resource_type,
        "change_type": o.change_type,
        "entity": o.entity,
        "owner": o.owner,
        "resource_key": o.resource_key,
        "attributes": o.attributes,
        "links": o.links,
    });
    let hash = Sha256::digest(content.to_string().as_bytes());
    hex::encode(&hash[..8])
}

fn orders_schema() -> Arc<Schema> {
    Arc::new(Schema::new(
        [
            "order_id",
            "run_id",
            "last_run_id",
            "connector",
            "resource_type",
            "change_type",
            "owner_key",
            "account_key",
            "attributes",
            "links",
            "state",
            "message",
        ]
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, true))
        .collect::<Vec<_>>(),
    ))
}

/// The next `provisioning_orders`: each order once by id; ids seen before keep their first run
/// and state (unless pending, blocked or inactive, which take the new state), and orders of
/// these connectors that this run no longer produces become `inactive`.
async fn merge(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    orders: &[Order],
    connectors: &[String],
    scope: Option<DataFrame>,
) -> Result<(NewTable, usize, usize)> {
    // Appended as borrowed text (no string per value), the JSON columns through one buffer.
    let mut cols: Vec<StringBuilder> = (0..12)
        .map(|_| StringBuilder::with_capacity(orders.len(), orders.len() * 16))
        .collect();
    let mut json = Vec::new();
    for o in orders {
        let mut values = cols.iter_mut();
        let mut next = || values.next().expect("invariant: 12 columns");
        next().append_value(&o.order_id);
        next().append_value(&rc.run_id);
        next().append_value(&rc.run_id);
        next().append_value(&o.connector);
        next().append_value(&o.resource_type);
        next().append_value(&o.change_type);
        next().append_option(o.owner.as_ref().map(|w| &w.key));
        next().append_option(o.account_key.as_ref());
        next().append_value(json_into(&mut json, &o.attributes));
        next().append_value(json_into(&mut json, &o.links));
        next().append_value(if o.blocked { "blocked" } else { "pending" });
        next().append_null();
    }
    let schema = orders_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        cols.iter_mut()
            .map(|c| Arc::new(c.finish()) as Arc<dyn Array>)
            .collect(),
    )
    .map_err(|e| Error::Engine(e.into()))?;
    let new = ctx.read_batch(batch)?;
    view(ctx, "orders_new", new.clone())?;
    let old = committed(ctx, catalog, TABLE, &schema).await?;
    view(ctx, "orders_old", old)?;
    let connector_list: Vec<&str> = connectors.iter().map(String::as_str).collect();
    view(
        ctx,
        "orders_connectors",
        ctx.read_batch(text_batch(&[("connector", connector_list)])?)?,
    )?;
    // Which old orders this run recomputed (dirty: those of the owners and accounts in scope).
    let full = scope.is_none();
    let scope = match scope {
        Some(s) => s,
        None => ctx.read_batch(text_batch(&[
            ("resource_type", vec![]),
            ("kind", vec![]),
            ("k", vec![]),
        ])?)?,
    };
    let scope = scope.select(vec![
        col("resource_type").alias("_srt"),
        col("kind").alias("_kind"),
        col("k").alias("_k"),
    ])?;
    // Two equi-joins (owners, accounts): a CASE in the join condition would compare every
    // old order with every key in scope.
    let old_orders = ctx.table("orders_old").await?;
    let of_kind = |kind: &str, column: &str| -> Result<DataFrame> {
        Ok(old_orders.clone().join(
            scope.clone().filter(col("_kind").eq(lit(kind)))?,
            JoinType::LeftSemi,
            &["resource_type", column],
            &["_srt", "_k"],
            None,
        )?)
    };
    let recomputed = of_kind("owner", "owner_key")?.union(of_kind("account", "account_key")?)?;
    // Collected once: the queries below read it three times, each a scan of every stored
    // order otherwise.
    let recomputed = super::role_model::materialize(
        ctx,
        recomputed
            .select(vec![col("order_id").alias("rid")])?
            .distinct()?,
    )
    .await?;
    view(ctx, "orders_recomputed", recomputed)?;
    let in_scope = if full { "TRUE" } else { "r.rid IS NOT NULL" };
    // Dirty: only the orders of this run and the old ones in scope can change; the others are
    // kept as stored and the table is patched (a rewrite reads and writes every order again).
    let touched = match full || !catalog.tables.contains_key(TABLE) {
        true => None,
        false => {
            let keys = ctx
                .sql("SELECT order_id AS k FROM orders_new UNION SELECT rid AS k FROM orders_recomputed")
                .await?;
            let keys = super::role_model::materialize(ctx, keys).await?;
            let stored = ctx.table("orders_old").await?;
            let old =
                super::dirty::keyed(rc, ctx, catalog, TABLE, stored, "order_id", &keys).await?;
            view(ctx, "orders_old_touched", old)?;
            Some(keys)
        }
    };
    let old_orders = match touched {
        Some(_) => "orders_old_touched",
        None => "orders_old",
    };
    let merged = ctx
        .sql(&format!(
            "SELECT coalesce(n.order_id, o.order_id) AS order_id,
                    -- The run that first emitted it: a blocked order was emitted by none.
                    CASE WHEN o.state = 'blocked' AND n.state = 'pending' THEN n.run_id
                         ELSE coalesce(o.run_id, n.run_id) END AS run_id,
                    coalesce(n.last_run_id, o.last_run_id) AS last_run_id,
                    coalesce(n.connector, o.connector) AS connector,
                    coalesce(n.resource_type, o.resource_type) AS resource_type,
                    coalesce(n.change_type, o.change_type) AS change_type,
                    coalesce(n.owner_key, o.owner_key) AS owner_key,
                    coalesce(n.account_key, o.account_key) AS account_key,
                    coalesce(n.attributes, o.attributes) AS attributes,
                    coalesce(n.links, o.links) AS links,
                    CASE
                        WHEN n.order_id IS NOT NULL AND (o.order_id IS NULL OR o.state IN ('pending', 'blocked', 'inactive')) THEN n.state
                        WHEN n.order_id IS NOT NULL THEN o.state
                        WHEN o.state IN ('pending', 'blocked') AND c.connector IS NOT NULL AND {in_scope} THEN 'inactive'
                        ELSE o.state
                    END AS state,
                    coalesce(n.message, o.message) AS message
             FROM orders_new n
             FULL OUTER JOIN {old_orders} o ON o.order_id = n.order_id
             LEFT JOIN orders_connectors c ON c.connector = o.connector
             LEFT JOIN orders_recomputed r ON r.rid = o.order_id
             ORDER BY order_id"
        ))
        .await?;
    // New: pending now and not before (unknown, blocked until this run released it, or no
    // longer needed until this run needed it again).
    let new_count = ctx
        .sql(&format!("SELECT n.order_id FROM orders_new n LEFT JOIN {old_orders} o ON o.order_id = n.order_id WHERE (o.order_id IS NULL OR o.state IN ('blocked', 'inactive')) AND n.state = 'pending'"))
        .await?
        .count()
        .await?;
    let inactive = ctx
        .sql(&format!(
            "SELECT o.order_id FROM {old_orders} o
             JOIN orders_connectors c ON c.connector = o.connector
             LEFT JOIN orders_new n ON n.order_id = o.order_id
             LEFT JOIN orders_recomputed r ON r.rid = o.order_id
             WHERE n.order_id IS NULL AND o.state IN ('pending', 'blocked') AND {in_scope}"
        ))
        .await?
        .count()
        .await?;
    let table = match touched {
        Some(keys) => {
            let replacement = super::frames::Replacement {
                old: ctx.table("orders_old").await?,
                keys,
                on: vec!["order_id"],
                new: merged,
                differs: false,
            };
            NewTable::replaced(rc, catalog, ctx, TABLE, replacement, &["order_id"], false).await?
        }
        None => NewTable::from_frame(TABLE, merged).await?,
    };
    Ok((table, new_count, inactive))
}

/// Compact JSON text (maps are sorted: deterministic).
/// The compact JSON of `v` (an order's attributes or links, as its table and Parquet file
/// hold them) written into `buf`, cleared first; empty should it not serialize.
fn json_into<'a, T: Serialize>(buf: &'a mut Vec<u8>, v: &T) -> &'a str {
    buf.clear();
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.clear();
    }
    std::str::from_utf8(buf).expect("invariant: serde_json writes UTF-8")
}

/// A connector's order files: its name, the JSON and (unless a dry run) the Parquet bytes.
type OrderFiles = (String, Vec<u8>, Option<Vec<u8>>);

/// Order files, one pair per run and connector (SPEC section 6), as (connector, JSON, Parquet)
/// bytes, each file encoded on a thread of its own. A connector without orders gets an empty
/// list, so a fulfiller can tell "nothing to do" from "not run" — unless its orders are held
/// back by a threshold: that is not "nothing to do". A dry run gets the JSON only, to print.
fn order_files(
    run_id: &str,
    connectors: &[String],
    orders: &[Order],
    dry_run: bool,
) -> Result<Vec<OrderFiles>> {
    let generated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut wanted: Vec<(&String, Vec<&Order>)> = Vec::new();
    for connector in connectors {
        let these: Vec<&Order> = orders
            .iter()
            .filter(|o| !o.blocked && &o.connector == connector)
            .collect();
        if these.is_empty()
            && (dry_run
                || orders
                    .iter()
                    .any(|o| o.blocked && &o.connector == connector))
        {
            continue;
        }
        wanted.push((connector, these));
    }
    let formats = [true, false].into_iter().filter(|&json| json || !dry_run);
    let jobs: Vec<(&String, &Vec<&Order>, bool)> = wanted
        .iter()
        .flat_map(|(c, these)| formats.clone().map(move |json| (*c, these, json)))
        .collect();
    let mut encoded = crate::engine::on_threads(jobs.into_iter(), |(connector, these, json)| {
        if json {
            let doc = OrdersFile {
                run_id,
                connector,
                generated_at: generated_at.clone(),
                orders: these.clone(),
            };
            serde_json::to_vec_pretty(&doc).map_err(|e| Error::store(e.to_string()))
        } else {
            parquet_of(run_id, connector, these)
        }
    })
    .into_iter();
    let mut files = Vec::new();
    for (connector, _) in &wanted {
        let json = encoded.next().expect("invariant: one JSON per file pair")?;
        let parquet = match dry_run {
            true => None,
            false => Some(
                encoded
                    .next()
                    .expect("invariant: one Parquet per file pair")?,
            ),
        };
        files.push((connector.to_string(), json, parquet));
    }
    Ok(files)
}

/// The Parquet form of a connector's orders: one row per order, attributes and links as JSON.
pub(crate) fn parquet_of(run_id: &str, connector: &str, orders: &[&Order]) -> Result<Vec<u8>> {
    let names = [
        "order_id",
        "run_id",
        "connector",
        "change_type",
        "resource_type",
        "entity",
        "owner_entity",
        "owner_key",
        "resource_key",
        "attributes",
        "links",
    ];
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let col = |f: &dyn Fn(&Order) -> Option<&str>| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter(orders.iter().map(|o| f(o))))
    };
    let constant = |v: &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            v,
            orders.len(),
        )))
    };
    let json_col = |f: &dyn Fn(&Order, &mut Vec<u8>)| -> Arc<dyn Array> {
        let mut b = StringBuilder::with_capacity(orders.len(), orders.len() * 64);
        let mut buf = Vec::new();
        for o in orders {
            f(o, &mut buf);
            b.append_value(std::str::from_utf8(&buf).expect("invariant: serde_json writes UTF-8"));
        }
        Arc::new(b.finish())
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            col(&|o| Some(&o.order_id)),
            constant(run_id),
            constant(connector),
            col(&|o| Some(&o.change_type)),
            col(&|o| Some(&o.resource_type)),
            col(&|o| Some(&o.entity)),
            col(&|o| o.owner.as_ref().map(|w| w.entity.as_str())),
            col(&|o| o.owner.as_ref().map(|w| w.key.as_str())),
            col(&|o| o.resource_key.as_deref()),
            json_col(&|o, buf| {
                json_into(buf, &o.attributes);
            }),
            json_col(&|o, buf| {
                json_into(buf, &o.links);
            }),
        ],
    )
    .map_err(|e| Error::Engine(e.into()))?;
    let mut out = Vec::new();
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None)
        .map_err(|e| Error::store(format!("orders parquet: {e}")))?;
    writer
        .write(&batch)
        .map_err(|e| Error::store(format!("orders parquet: {e}")))?;
    writer
        .close()
        .map_err(|e| Error::store(format!("orders parquet: {e}")))?;
    Ok(out)
}

/// `<orders dir>/<run_id>/<connector>.<ext>`: `[output] orders` (relative to the pipeline) or
/// `_orders` in the store.
async fn write_order_file(
    rc: &RunContext<'_>,
    connector: &str,
    ext: &str,
    bytes: Vec<u8>,
) -> Result<()> {
    match &rc.pipeline.orders_dir {
        Some(dir) => {
            let dir = rc.pipeline.dir.join(dir).join(&rc.run_id);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
            let path = dir.join(format!("{connector}.{ext}"));
            let tmp = dir.join(format!(".{connector}.{ext}.tmp"));
            std::fs::write(&tmp, &bytes)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|source| Error::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })
        }
        None => {
            rc.store
                .put_file(&format!("_orders/{}/{connector}.{ext}", rc.run_id), bytes)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_part_cte_of_orders_sql_is_a_piece() {
        let pieces: Vec<&str> = super::order_pieces().collect();
        assert_eq!(pieces.len(), super::ORDERS_SQL.matches("\npart_").count());
        assert_eq!(pieces.first(), Some(&"part_added"));
        assert_eq!(pieces.last(), Some(&"part_deleted"));
        assert_eq!(pieces.len(), 9);
    }
}
