//! Configuration expressions (`computed` columns today; rules and scalars later): planned against
//! the declared schema at validation time, evaluated set-wise over whole tables at run time.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::prelude::{DataFrame, SessionContext};

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
        let probe = next
            .clone()
            .select(vec![datafusion::prelude::ident(&c.name)])
            .map(|p| p.collect());
        let failed = match probe {
            Ok(run) => run.await.err(),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            return crate::error::Error::config(
                pipeline,
                c.line,
                format!(
                    "computed column `{}` = \"{}\" of entity `{}` fails on the exported data: {}. Fix the expression (for example with try_cast, or a CASE that leaves such values out) or the export",
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
