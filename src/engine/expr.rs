//! Configuration expressions (`computed` columns today; rules and scalars later): planned against
//! the declared schema at validation time, evaluated set-wise over whole tables at run time.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext, ident, lit};

use crate::config::Entity;

/// The declared (CSV) columns of an entity as an Arrow schema.
pub fn declared_schema(entity: &Entity) -> SchemaRef {
    Arc::new(Schema::new(
        entity
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.data_type(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Adds the entity's computed columns, in declaration order (each may use the ones before it).
pub fn apply_computed(
    ctx: &SessionContext,
    mut df: DataFrame,
    entity: &Entity,
) -> datafusion::error::Result<DataFrame> {
    for c in &entity.computed {
        let expr = ctx.parse_sql_expr(&c.expr, df.schema())?;
        df = df.with_column(&c.name, expr)?;
    }
    Ok(df)
}

/// Explains a failed evaluation of `entity`'s computed columns over `declared` (its declared
/// columns): the first computed column whose evaluation fails on its own becomes a
/// configuration error at its line in `pipeline` (exit 2), with the engine's message, which
/// names the offending value. Any other failure (out of memory, I/O) comes back unchanged.
pub async fn computed_failure(
    ctx: &SessionContext,
    pipeline: &std::path::Path,
    declared: DataFrame,
    entity: &Entity,
    error: crate::error::Error,
) -> crate::error::Error {
    let crate::error::Error::Engine(cause) = &error else {
        return error;
    };
    if cause.to_string().contains("Resources exhausted") {
        return error;
    }
    let mut df = declared;
    for c in &entity.computed {
        let Ok(next) = ctx
            .parse_sql_expr(&c.expr, df.schema())
            .and_then(|expr| df.clone().with_column(&c.name, expr))
        else {
            return error;
        };
        if let Some(e) = fails(&next, &c.name).await {
            // `df`: the declared columns and the computed ones before this one.
            let (e, row) = with_first_failing_row(ctx, &df, entity, &c.expr, e).await;
            return crate::error::Error::config(
                pipeline,
                c.line,
                format!(
                    "computed column `{}` = \"{}\" of entity `{}` fails on the exported data: {}{row}. Fix the expression (for example with try_cast, or a CASE that leaves such values out) or the export",
                    c.name,
                    c.expr,
                    entity.name,
                    e.strip_backtrace()
                ),
            );
        }
        df = next;
    }
    error
}

/// `error` (the engine's error on the whole table) and the first failing row as a message
/// suffix; the error is then the one of that row, so that the value the engine names is the
/// row's own.
pub async fn with_first_failing_row(
    ctx: &SessionContext,
    table: &DataFrame,
    entity: &Entity,
    expr: &str,
    error: DataFusionError,
) -> (DataFusionError, String) {
    match first_failing_row(ctx, table, entity, expr).await {
        Some((row, e)) => (e, format!("; first failing row: {row}")),
        None => (error, String::new()),
    }
}

/// The column a probe evaluates an expression into.
const PROBE: &str = "__igaflow_probe";

/// The engine's error evaluating the expression `expr` over every row of `table`: `Some(None)`
/// when it evaluates, `None` when it does not plan over the table's columns.
pub async fn evaluation_error(
    ctx: &SessionContext,
    table: DataFrame,
    expr: &str,
) -> Option<Option<DataFusionError>> {
    let e = ctx.parse_sql_expr(expr, table.schema()).ok()?;
    let probe = table.with_column(PROBE, e).ok()?;
    Some(fails(&probe, PROBE).await)
}

/// Evaluates column `name` of `df`; the engine's error if that fails.
async fn fails(df: &DataFrame, name: &str) -> Option<DataFusionError> {
    match df.clone().select(vec![ident(name)]) {
        Ok(probe) => probe.collect().await.err(),
        Err(e) => Some(e),
    }
}

/// The first row, in key order, of `table` (rows of `entity`) on which the expression `expr`
/// fails, with the engine's error on that row alone: its key and the values the expression
/// reads (`key `P3` (salary = 0, days = 0)`), so that a failure the engine reports without a
/// value (a division by zero) still names one.
/// Found by halving the key range — about log2(rows) small queries, on the error path only.
/// `None` when the rows do not fail one by one (or a probe fails to plan).
async fn first_failing_row(
    ctx: &SessionContext,
    table: &DataFrame,
    entity: &Entity,
    expr: &str,
) -> Option<(String, DataFusionError)> {
    let key = ident(&entity.key);
    let sorted = table
        .clone()
        .filter(key.clone().is_not_null())
        .and_then(|df| df.select(vec![key.clone()]))
        .and_then(|df| df.sort(vec![key.clone().sort(true, false)]))
        .ok()?
        .collect()
        .await
        .ok()?;
    let schema = sorted.first()?.schema();
    let keys = concat_batches(&schema, &sorted).ok()?;
    let keys = keys.column(0);
    let at = |i: usize| ScalarValue::try_from_array(keys, i).ok();
    let range_error = |lo: usize, hi: usize| {
        let (lo, hi) = (at(lo), at(hi));
        let key = key.clone();
        async move {
            let range = key.clone().gt_eq(lit(lo?)).and(key.lt_eq(lit(hi?)));
            evaluation_error(ctx, table.clone().filter(range).ok()?, expr).await
        }
    };
    let (mut lo, mut hi) = (0, keys.len().checked_sub(1)?);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if range_error(lo, mid).await?.is_some() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let error = range_error(lo, lo).await??;
    let found = at(lo)?;
    // The columns the expression reads, as the row has them (earlier computed ones included).
    let before = table.clone();
    let expr = ctx.parse_sql_expr(expr, before.schema()).ok()?;
    let mut read: Vec<String> = expr
        .column_refs()
        .into_iter()
        .map(|c| c.name.clone())
        .collect();
    read.sort_by_key(|n| before.schema().index_of_column_by_name(None, n));
    read.dedup();
    let row = before
        .filter(key.eq(lit(found.clone())))
        .and_then(|df| df.select(read.iter().map(ident).collect::<Vec<_>>()))
        .ok()?
        .limit(0, Some(1))
        .ok()?
        .collect()
        .await
        .ok()?;
    let values: Vec<String> = match row.iter().find(|b| b.num_rows() > 0) {
        Some(b) => read
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = ScalarValue::try_from_array(b.column(i), 0)
                    .map(|v| match v {
                        _ if v.is_null() => "NULL".to_string(),
                        ScalarValue::Utf8(_)
                        | ScalarValue::Utf8View(_)
                        | ScalarValue::LargeUtf8(_) => {
                            format!("'{v}'")
                        }
                        _ => v.to_string(),
                    })
                    .unwrap_or_default();
                format!("{n} = {v}")
            })
            .collect(),
        None => Vec::new(),
    };
    let row = format!(
        "key `{found}` of entity `{}` ({})",
        entity.name,
        values.join(", ")
    );
    Some((row, error))
}

/// Plans every computed expression of `entity` against its declared columns; returns
/// `(line, message)` for each one that does not plan.
pub fn check_computed(entity: &Entity) -> Vec<(usize, String)> {
    let ctx = super::context();
    let schema = declared_schema(entity);
    let mut problems = Vec::new();
    let mut df = match ctx.read_batch(RecordBatch::new_empty(schema)) {
        Ok(df) => df,
        Err(e) => return vec![(entity.line, e.strip_backtrace())],
    };
    for c in &entity.computed {
        let planned = ctx
            .parse_sql_expr(&c.expr, df.schema())
            .and_then(|expr| df.clone().with_column(&c.name, expr));
        let planned = planned.and_then(|next| {
            // Type checking happens in the analyzer: plan fully so `'a' + 1` fails here.
            let plan = next.logical_plan().clone();
            ctx.state().optimize(&plan).map(|_| next)
        });
        match planned {
            Ok(next) => df = next,
            Err(e) => problems.push((
                c.line,
                format!(
                    "entity `{}`: computed column `{}` = \"{}\" does not plan: {}",
                    entity.name,
                    c.name,
                    c.expr,
                    first_line(&e.strip_backtrace())
                ),
            )),
        }
    }
    problems
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// An empty frame with the entity's full schema: declared columns, then computed ones.
pub fn empty_entity_frame(
    ctx: &SessionContext,
    entity: &Entity,
) -> datafusion::error::Result<DataFrame> {
    let df = ctx.read_batch(RecordBatch::new_empty(declared_schema(entity)))?;
    apply_computed(ctx, df, entity)
}

/// Plans `text` as an expression over `df`'s columns (parse, type-check, optimize) and returns
/// its type, or the planner's first message line.
pub fn plan_expr(
    ctx: &SessionContext,
    df: &DataFrame,
    text: &str,
) -> std::result::Result<datafusion::arrow::datatypes::DataType, String> {
    let planned = ctx
        .parse_sql_expr(text, df.schema())
        .and_then(|expr| df.clone().select(vec![expr.alias("_e")]))
        .and_then(|next| {
            let plan = next.logical_plan().clone();
            ctx.state().optimize(&plan).map(|_| next)
        });
    match planned {
        Ok(next) => Ok(next.schema().field(0).data_type().clone()),
        Err(e) => Err(first_line(&e.strip_backtrace())),
    }
}
