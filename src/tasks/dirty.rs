//! Incremental ("dirty") processing (SPEC section 7).
//!
//! `set_recently_modified_flag` works out what changed since the last run that brought the role
//! model and the orders up to date (of any job) and writes it to `dirty_scope` (`run_id`, `as_of`, `kind` = owner|account|all, `entity`, `key`):
//! every key in `recently_modified` since then — owners, accounts, and the accounts of changed
//! link rows — plus the owners of manual assignments (their dates move with the calendar) and
//! of pre-existing rights saved since. When the watermark is unknown (first run), the
//! configuration changed since, or an expression uses `current_date` and the as-of date moved,
//! the scope is `all` and the dirty tasks process everything.
//!
//! Tasks with `dirty = true` read the scope of the current run and recompute only the rows of
//! those owners and accounts, merging them into the full tables; without a scope of this run
//! they process everything. Correlation and classification are not owner-local (an ambiguity
//! or a duplicate spans several owners), so the role model correlates again every account
//! whose correlation may have changed: the changed accounts, those sharing a rule value with a
//! changed owner (in the correlation keys the watermark run's role model read, and now), and
//! every account competing for an owner with those (`role_model::affected_accounts`). Without
//! those keys it correlates every account. It then widens the scope with every owner whose
//! correlation changed; the result equals a complete recomputation.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::*;

use super::frames::{NewTable, commit_tables, quoted, session};
use super::role_model::{empty, union_all};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::Task;
use crate::error::Result;
use crate::store::Catalog;

pub const TABLE: &str = "dirty_scope";

/// The keys a dirty task must process in this run; `None`: everything.
pub struct Scope {
    /// (`entity`, `key`) of owners.
    pub owners: DataFrame,
    /// (`entity`, `key`) of accounts.
    pub accounts: DataFrame,
    /// Whether a dirty role model of this run added the accounts whose correlation it changed
    /// to `accounts` (a `correlated` row).
    pub correlated: bool,
    /// The run after which the role model and the orders were last up to date (the
    /// watermark): everything changed since is in the scope. Empty when unknown.
    pub since: String,
}

/// The kind of the `dirty_scope` row a dirty role model adds once it has added the accounts
/// whose correlation changed.
pub const CORRELATED: &str = "correlated";

pub async fn run(rc: &RunContext<'_>, _task: &Task) -> Result<TaskOutcome> {
    let (ctx, catalog) = session(rc).await?;
    let model = &rc.pipeline.model;
    let as_of = rc.as_of.to_string();

    // The last run (of any job) after which the role model and the orders were up to date: it
    // ended well and both tasks ended well in it. Everything since is recent.
    let mut all_reason: Option<String> = None;
    let mut watermark: Option<String> = None;
    if catalog.tables.contains_key("runs") && catalog.tables.contains_key("task_runs") {
        let rows = ctx
            .sql(
                "SELECT CAST(r.run_id AS VARCHAR) AS rid, CAST(r.config_hash AS VARCHAR) AS hash
                 FROM runs r
                 WHERE r.status IN ('succeeded', 'warning', 'no_changes')
                   AND r.run_id IN (SELECT run_id FROM task_runs
                                    WHERE type = 'compute_role_model' AND status IN ('succeeded', 'warning', 'no_changes'))
                   AND r.run_id IN (SELECT run_id FROM task_runs
                                    WHERE type = 'generate_provisioning_orders' AND status IN ('succeeded', 'warning', 'no_changes'))
                 ORDER BY rid DESC LIMIT 1",
            )
            .await?
            .collect()
            .await?;
        if let Some((run_id, hash)) = first_two(&rows) {
            if hash != rc.pipeline.config_hash {
                all_reason = Some("the configuration changed since the last run".into());
            }
            watermark = Some(run_id);
        }
    }
    if watermark.is_none() && all_reason.is_none() {
        all_reason = Some("no earlier run computed the role model and the orders".into());
    }
    let text = std::fs::read_to_string(&rc.pipeline.file).unwrap_or_default();
    if all_reason.is_none()
        && text.to_ascii_lowercase().contains("current_date")
        && catalog.tables.contains_key(TABLE)
    {
        let last = ctx
            .sql(&format!("SELECT CAST(max(as_of) AS VARCHAR) FROM {TABLE}"))
            .await?
            .collect()
            .await?;
        let last_as_of = first_text(&last);
        if last_as_of.as_deref() != Some(as_of.as_str()) {
            all_reason = Some("expressions use current_date and the as-of date moved".into());
        }
    }

    let header = |kind: &str| -> Vec<Expr> {
        vec![
            lit(rc.run_id.as_str()).alias("run_id"),
            lit(as_of.as_str()).alias("as_of"),
            lit(kind).alias("kind"),
        ]
    };
    let scope = if let Some(reason) = &all_reason {
        one_row(&ctx, &rc.run_id, &as_of, "all", reason)?
    } else {
        let since = watermark.clone().unwrap_or_default();
        let owner_entities: Vec<String> = model
            .resource_types
            .iter()
            .map(|r| r.owner.clone())
            .chain(model.roles.iter().map(|r| r.owner.clone()))
            .collect();
        let target_entities: Vec<String> = model
            .resource_types
            .iter()
            .map(|r| r.target.clone())
            .collect();
        let mut frames = Vec::new();
        if catalog.tables.contains_key("recently_modified") {
            let recent = ctx
                .table("recently_modified")
                .await?
                .filter(col("run_id").gt(lit(since.as_str())))?;
            let in_list = |v: &[String]| v.iter().map(|e| lit(e.as_str())).collect::<Vec<_>>();
            let mut owner_cols = header("owner");
            owner_cols.extend([col("entity"), col("key")]);
            frames.push(
                recent
                    .clone()
                    .filter(col("entity").in_list(in_list(&owner_entities), false))?
                    .select(owner_cols)?,
            );
            let mut acc_cols = header("account");
            acc_cols.extend([col("entity"), col("key")]);
            frames.push(
                recent
                    .clone()
                    .filter(col("entity").in_list(in_list(&target_entities), false))?
                    .select(acc_cols.clone())?,
            );
            // Link rows are recorded under the link's name, keyed by the account.
            for l in &rc.pipeline.links {
                if target_entities.contains(&l.from.entity) {
                    let mut cols = header("account");
                    cols.extend([lit(l.from.entity.as_str()).alias("entity"), col("key")]);
                    frames.push(
                        recent
                            .clone()
                            .filter(col("entity").eq(lit(l.name.as_str())))?
                            .select(cols)?,
                    );
                }
            }
        }
        if catalog.tables.contains_key(super::role_model::PRE_EXISTING) {
            for rt in &model.resource_types {
                let mut cols = header("owner");
                cols.extend([
                    lit(rt.owner.as_str()).alias("entity"),
                    col("owner_key").alias("key"),
                ]);
                frames.push(
                    ctx.table(super::role_model::PRE_EXISTING)
                        .await?
                        .filter(
                            col("run_id")
                                .gt(lit(since.as_str()))
                                .and(col("resource_type").eq(lit(rt.name.as_str()))),
                        )?
                        .select(cols)?,
                );
            }
        }
        if let Some(m) = &model.manual_assignments {
            // Every owner named in the requests file (a handful): their dates move daily.
            let manual = super::role_model::read_manual(m)?;
            let requests = super::frames::frame(&ctx, &manual.schema, &manual.batches)?
                .select(vec![col("owner_key").alias("key")])?;
            // And every owner holding a manual assignment now: a line removed from the file
            // names its owner no more, and that owner's role must go.
            let requests = if catalog.tables.contains_key("assigned_roles") {
                requests.union(
                    ctx.table("assigned_roles")
                        .await?
                        .filter(col("origin").eq(lit("manual")))?
                        .select(vec![cast(col("owner_key"), DataType::Utf8).alias("key")])?,
                )?
            } else {
                requests
            };
            for owner in owner_entities
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
            {
                let mut cols = header("owner");
                cols.extend([lit(owner.as_str()).alias("entity"), col("key")]);
                frames.push(requests.clone().select(cols)?);
            }
        }
        // A marker row says that this run has a scope, even an empty one.
        frames.insert(0, one_row(&ctx, &rc.run_id, &as_of, "run", &since)?);
        union_all(frames)?.expect("the marker").distinct()?
    };
    let table = NewTable::from_frame(
        TABLE,
        scope.sort(vec![
            col("kind").sort(true, true),
            col("entity").sort(true, true),
            col("key").sort(true, true),
        ])?,
    )
    .await?;
    let n = table.rows().saturating_sub(1);
    commit_tables(rc, &catalog, "task:set_recently_modified_flag", vec![table]).await?;
    let message = match &all_reason {
        Some(r) => format!("everything is dirty: {r}"),
        None => format!(
            "{n} owner(s) and account(s) changed since run {}",
            watermark.unwrap_or_default()
        ),
    };
    Ok(TaskOutcome {
        status: if all_reason.is_none() && n == 0 {
            TaskStatus::NoChanges
        } else {
            TaskStatus::Succeeded
        },
        rows_read: 0,
        rows_written: n,
        changes: n,
        message,
        exit_code: 0,
    })
}

/// One `dirty_scope` row without a key (`all` with its reason, or the `run` marker with the
/// watermark), built from a batch: an empty relation projected to literals can be optimized
/// away inside a union.
fn one_row(
    ctx: &SessionContext,
    run_id: &str,
    as_of: &str,
    kind: &str,
    entity: &str,
) -> Result<DataFrame> {
    let batch = super::role_model::text_batch(&[
        ("run_id", vec![run_id]),
        ("as_of", vec![as_of]),
        ("kind", vec![kind]),
        ("entity", vec![entity]),
        ("key", vec![""]),
    ])?;
    Ok(ctx.read_batch(batch)?)
}

fn first_two(rows: &[datafusion::arrow::array::RecordBatch]) -> Option<(String, String)> {
    use datafusion::arrow::array::{Array, StringArray};
    let b = rows.iter().find(|b| b.num_rows() > 0)?;
    let a = b.column(0).as_any().downcast_ref::<StringArray>()?;
    let h = b.column(1).as_any().downcast_ref::<StringArray>()?;
    Some((
        a.value(0).to_string(),
        if h.is_null(0) {
            String::new()
        } else {
            h.value(0).to_string()
        },
    ))
}

fn first_text(rows: &[datafusion::arrow::array::RecordBatch]) -> Option<String> {
    use datafusion::arrow::array::{Array, StringArray};
    let b = rows.iter().find(|b| b.num_rows() > 0)?;
    let a = b.column(0).as_any().downcast_ref::<StringArray>()?;
    (!a.is_null(0)).then(|| a.value(0).to_string())
}

/// The scope of this run for a task with `dirty = true`; `None` means process everything.
pub async fn scope(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    task: &Task,
) -> Result<Option<Scope>> {
    if !task.dirty || !catalog.tables.contains_key(TABLE) {
        return Ok(None);
    }
    let table = ctx
        .table(TABLE)
        .await?
        .filter(col("run_id").eq(lit(rc.run_id.as_str())))?;
    let kinds = table
        .clone()
        .aggregate(vec![col("kind")], vec![])?
        .select(vec![cast(col("kind"), DataType::Utf8).alias("kind")])?
        .collect()
        .await?;
    // No row of this run (no set_recently_modified_flag before this task), or `all`: everything.
    let (mut has_marker, mut correlated) = (false, false);
    for b in &kinds {
        use datafusion::arrow::array::{Array, StringArray};
        let Some(k) = b.column(0).as_any().downcast_ref::<StringArray>() else {
            return Ok(None);
        };
        for i in 0..b.num_rows() {
            match (!k.is_null(i)).then(|| k.value(i)) {
                Some("all") => return Ok(None),
                Some("run") => has_marker = true,
                Some(CORRELATED) => correlated = true,
                _ => {}
            }
        }
    }
    if !has_marker {
        return Ok(None);
    }
    let marker = table
        .clone()
        .filter(col("kind").eq(lit("run")))?
        .select(vec![cast(col("entity"), DataType::Utf8)])?
        .collect()
        .await?;
    let since = first_text(&marker).unwrap_or_default();
    let pick = |kind: &str| -> Result<DataFrame> {
        Ok(table
            .clone()
            .filter(col("kind").eq(lit(kind)))?
            .select(vec![col("entity"), col("key")])?)
    };
    Ok(Some(Scope {
        owners: pick("owner")?,
        accounts: pick("account")?,
        correlated,
        since,
    }))
}

/// Rows of `df` whose `key_expr` (as text) is a key of `entity` in `keys` (`entity`, `key`).
pub fn restrict(
    df: DataFrame,
    key_expr: Expr,
    entity: &str,
    keys: &DataFrame,
) -> Result<DataFrame> {
    let wanted = keys
        .clone()
        .filter(col("entity").eq(lit(entity)))?
        .select(vec![col("key").alias("_scope_key")])?;
    let cols: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| quoted(f.name()))
        .collect();
    Ok(df
        .with_column("_scope_probe", cast(key_expr, DataType::Utf8))?
        .join(
            wanted,
            JoinType::LeftSemi,
            &["_scope_probe"],
            &["_scope_key"],
            None,
        )?
        .select(cols)?)
}

/// An empty (`entity`, `key`) frame.
pub fn no_keys(ctx: &SessionContext) -> Result<DataFrame> {
    empty(
        ctx,
        Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("entity", DataType::Utf8, true),
            datafusion::arrow::datatypes::Field::new("key", DataType::Utf8, true),
        ])),
    )
}

/// Keeps the rows whose `on` column is among `keys` (a frame with one column `k`).
pub trait SemiOn: Sized {
    fn semi_on(self, on: &str, keys: DataFrame) -> Result<Self>;
}

impl SemiOn for DataFrame {
    fn semi_on(self, on: &str, keys: DataFrame) -> Result<Self> {
        // The keys are the hash table: a scope is far smaller than the table it cuts.
        Ok(keys.join(self, JoinType::RightSemi, &["k"], &[on], None)?)
    }
}

/// The committed rows of table `name` whose column `on` is among `keys` (a frame with one
/// column `k`): `table.semi_on(on, keys)`, `table` being the session's frame of the table. At
/// 1M identities a scope holds a few thousand of a million owners, and the semi join decodes
/// the key column of every row and probes it (0.8 s of CPU for the 13.6M memberships); here
/// the store looks the keys up in the key column ([`crate::store::Store::rows_of_keys`]) and
/// reads back the rows found. The semi join where the store cannot.
pub async fn keyed(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    name: &str,
    table: DataFrame,
    on: &str,
    keys: &DataFrame,
) -> Result<DataFrame> {
    if let Some(&version) = catalog.tables.get(name).filter(|v| **v != u64::MAX) {
        let schema = Arc::new(table.schema().as_arrow().clone());
        let started = std::time::Instant::now();
        let found = rc
            .store
            .rows_of_keys(name, version, keys.clone(), &[on], &schema)
            .await?;
        if let Some(rows) = found {
            tracing::debug!(
                table = name,
                on,
                rows = rows.iter().map(|b| b.num_rows()).sum::<usize>(),
                seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                "rows of keys"
            );
            return super::frames::frame(ctx, &schema, &rows);
        }
    }
    table.semi_on(on, keys.clone())
}

/// Whether column `c` of `df` holds text, so that [`keyed`] (and its fallback semi join) compare
/// it with a scope's key text as it is; another type needs a cast first (see [`restrict`]).
pub fn text_column(df: &DataFrame, c: &str) -> bool {
    df.schema()
        .field_with_unqualified_name(c)
        .is_ok_and(|f| crate::engine::is_text(f.data_type()))
}

/// Column `c` of the linked rows of `correlations` rows, as `k`.
pub fn linked_keys(correlations: DataFrame, c: &str) -> Result<DataFrame> {
    Ok(correlations
        .filter(col("status").eq(lit("linked")))?
        .select(vec![col(c).alias("k")])?)
}

/// Which key set of a [`ScopeRows`] a lookup is cut to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Side {
    /// The changed accounts of every target entity (and those `update_identities` acted on).
    Changed,
    /// The owners in the scope of any resource type.
    Owners,
    /// The accounts in the scope of any resource type.
    Accounts,
}

/// The stored rows of a dirty run's scope, looked up by key once for every resource type
/// ([`keyed`]) and cut in memory to each type's own keys. A resource type's scope is its
/// changed owners and accounts, each with its counterpart (an owner's linked accounts, an
/// account's owner); the union over every type is found here first, from `correlations`, so
/// that every type's keys are among the keys looked up. At 1M identities each lookup decodes a
/// key column of a million rows or more (0.05-0.2 s) to keep a few thousand: with two resource
/// types, once instead of twice.
pub struct ScopeRows {
    changed: DataFrame,
    owners: DataFrame,
    /// The session's frame of `correlations`.
    stored: DataFrame,
    /// The linked rows of the owners (`correlations` by `owner_key`) and the accounts, found
    /// when first wanted ([`ScopeRows::accounts`]): the owners' lookups need neither.
    accounts: tokio::sync::OnceCell<(DataFrame, DataFrame)>,
    found: tokio::sync::Mutex<std::collections::HashMap<(String, String), DataFrame>>,
}

impl ScopeRows {
    /// `stored`: the session's frame of `correlations`; `identity_accounts`: accounts
    /// `update_identities` acted on in this run, as `k`.
    pub async fn new(
        rc: &RunContext<'_>,
        ctx: &SessionContext,
        catalog: &Catalog,
        scope: &Scope,
        stored: DataFrame,
        identity_accounts: Option<DataFrame>,
    ) -> Result<Self> {
        use super::role_model::materialize;
        let mut changed = scope.accounts.clone().select(vec![col("key").alias("k")])?;
        if let Some(more) = identity_accounts {
            changed = changed.union(more)?;
        }
        let changed = materialize(ctx, changed.distinct()?).await?;
        let of_changed = keyed(
            rc,
            ctx,
            catalog,
            "correlations",
            stored.clone(),
            "account_key",
            &changed,
        )
        .await?;
        let of_changed = materialize(ctx, of_changed).await?;
        let owners = scope
            .owners
            .clone()
            .select(vec![col("key").alias("k")])?
            .union(linked_keys(of_changed.clone(), "owner_key")?)?;
        let owners = materialize(ctx, owners.distinct()?).await?;
        let found = [(
            ("correlations".to_string(), "account_key".to_string()),
            of_changed,
        )]
        .into_iter()
        .collect();
        Ok(Self {
            changed,
            owners,
            stored,
            accounts: tokio::sync::OnceCell::new(),
            found: tokio::sync::Mutex::new(found),
        })
    }

    /// The linked rows of the owners (`correlations` by `owner_key`), and the accounts: the
    /// changed ones and the owners' linked ones. Found once, when first wanted.
    async fn accounts(
        &self,
        rc: &RunContext<'_>,
        ctx: &SessionContext,
        catalog: &Catalog,
    ) -> Result<&(DataFrame, DataFrame)> {
        use super::role_model::materialize;
        self.accounts
            .get_or_try_init(|| async {
                let of_owners = keyed(
                    rc,
                    ctx,
                    catalog,
                    "correlations",
                    self.stored.clone(),
                    "owner_key",
                    &self.owners,
                )
                .await?;
                let of_owners = materialize(ctx, of_owners).await?;
                let accounts = self
                    .changed
                    .clone()
                    .union(linked_keys(of_owners.clone(), "account_key")?)?;
                let accounts = materialize(ctx, accounts.distinct()?).await?;
                Ok::<_, crate::error::Error>((of_owners, accounts))
            })
            .await
    }

    /// Looks up the rows of each `(table, column, side)` of `wanted` at once (each lookup is
    /// parallel only in its decoding: its key sets, Delta log and footers, and the frame of
    /// its rows, leave a core idle), for [`ScopeRows::rows`] to find. A table not committed
    /// is left to `rows` (and to the error of the task's own read).
    pub async fn prefetch(
        &self,
        rc: &RunContext<'_>,
        ctx: &SessionContext,
        catalog: &Catalog,
        wanted: &[(String, String, Side)],
    ) -> Result<()> {
        let known: std::collections::HashSet<(String, String)> =
            self.found.lock().await.keys().cloned().collect();
        let mut ids = std::collections::HashMap::new();
        for (name, on, side) in wanted {
            let id = (name.clone(), on.clone());
            if catalog.tables.contains_key(name) && !known.contains(&id) {
                ids.insert(id, *side);
            }
        }
        let lookups = ids.into_iter().map(|((name, on), side)| async move {
            let table = ctx.table(name.as_str()).await?;
            let df = self
                .look_up(rc, ctx, catalog, &name, table, &on, side)
                .await?;
            Ok::<_, crate::error::Error>(((name, on), df))
        });
        let found = futures::future::try_join_all(lookups).await?;
        self.found.lock().await.extend(found);
        Ok(())
    }

    /// The committed rows of table `name` whose column `on` is among the `side` key set,
    /// collected.
    #[allow(clippy::too_many_arguments)]
    async fn look_up(
        &self,
        rc: &RunContext<'_>,
        ctx: &SessionContext,
        catalog: &Catalog,
        name: &str,
        table: DataFrame,
        on: &str,
        side: Side,
    ) -> Result<DataFrame> {
        let keys = match side {
            Side::Changed => &self.changed,
            Side::Owners => &self.owners,
            Side::Accounts => &self.accounts(rc, ctx, catalog).await?.1,
        };
        let df = keyed(rc, ctx, catalog, name, table, on, keys).await?;
        super::role_model::materialize(ctx, df).await
    }

    /// The committed rows of table `name` (`table`: the session's frame of it) whose column
    /// `on` is among `keys` (a frame of `k`, a subset of the `side` key set).
    #[allow(clippy::too_many_arguments)]
    pub async fn rows(
        &self,
        rc: &RunContext<'_>,
        ctx: &SessionContext,
        catalog: &Catalog,
        name: &str,
        table: DataFrame,
        on: &str,
        side: Side,
        keys: &DataFrame,
    ) -> Result<DataFrame> {
        let id = (name.to_string(), on.to_string());
        // The owners' correlation rows are found with the accounts (not in `found`, whose
        // lock a lookup of the accounts' side holds while it waits for them).
        let found = if name == "correlations" && on == "owner_key" {
            self.accounts(rc, ctx, catalog).await?.0.clone()
        } else {
            let mut memo = self.found.lock().await;
            match memo.get(&id) {
                Some(df) => df.clone(),
                None => {
                    let df = self
                        .look_up(rc, ctx, catalog, name, table, on, side)
                        .await?;
                    memo.insert(id, df.clone());
                    df
                }
            }
        };
        // Compared as text, as the store's lookup compares them; the keys renamed apart from
        // the table's columns (a key column may be called `k`).
        let key = cast(super::frames::quoted(on), DataType::Utf8);
        let keys = keys
            .clone()
            .select(vec![col("k").alias("_scope_rows_key")])?;
        Ok(found.join_on(keys, JoinType::LeftSemi, [key.eq(col("_scope_rows_key"))])?)
    }
}
