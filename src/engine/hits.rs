//! `rule_positions(true, c1, c2, …)`: the list of the positions (0-based) of the rules that hold
//! (TRUE; NULL counts as false) in a row. The role model and classification evaluate hundreds
//! of rules in one scan of the owners; a row matches a few of them, so the result is small,
//! where an array of one CASE per rule would hold a (mostly NULL) element per rule and row.
//!
//! The rules travel inside the function, planned over the columns they name (`c1, c2, …`, its
//! arguments after the first, a constant there for a rule that names no column), rather than
//! as arguments of their own. As arguments, the optimizer's common-subexpression pass lifted
//! every part that rules share (`status <> 'terminated'`, `… AND department = 'Finance-1'`
//! under several grades) into a column of the batch, and each `a AND b` whose `a` holds for few rows, which
//! evaluates `b` over those rows alone, first filtered all those columns: at 1M identities
//! and 300 rules, 0.9 s of CPU in filters of some hundred boolean columns.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, ListArray, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::buffer::{BooleanBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

/// Rules planned over `schema` (the columns they name, in the order the function takes them
/// after its first argument). `texts` name them for equality and hashing: two functions with
/// the same texts over the same schema are the same.
#[derive(Debug)]
struct RulePositions {
    signature: Signature,
    schema: SchemaRef,
    rules: Vec<Arc<dyn PhysicalExpr>>,
    texts: Vec<String>,
}

impl PartialEq for RulePositions {
    fn eq(&self, other: &Self) -> bool {
        self.texts == other.texts && self.schema == other.schema
    }
}
impl Eq for RulePositions {}
impl Hash for RulePositions {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.texts.hash(state);
    }
}

/// `rule_positions` of `rules` (with their texts, `texts`), planned over `schema`.
pub fn rule_positions_udf(
    schema: SchemaRef,
    rules: Vec<Arc<dyn PhysicalExpr>>,
    texts: Vec<String>,
) -> ScalarUDF {
    ScalarUDF::from(RulePositions {
        signature: Signature::variadic_any(Volatility::Immutable),
        schema,
        rules,
        texts,
    })
}

fn item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Int32, false))
}

impl ScalarUDFImpl for RulePositions {
    fn name(&self) -> &str {
        "rule_positions"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns = args.args[1..]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let mut trues: Vec<BooleanBuffer> = Vec::with_capacity(self.rules.len());
        for (rule, text) in self.rules.iter().zip(&self.texts) {
            let value = rule.evaluate(&batch)?.to_array(rows)?;
            let b = value.as_boolean_opt().ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "rule `{text}` must be boolean, got {}",
                    value.data_type()
                ))
            })?;
            trues.push(match b.nulls() {
                Some(n) => b.values() & n.inner(),
                None => b.values().clone(),
            });
        }
        Ok(ColumnarValue::Array(Arc::new(positions(&trues, rows)?)))
    }
}

/// Per row, the positions of the `trues` that have its bit set, in order.
fn positions(trues: &[BooleanBuffer], rows: usize) -> Result<ListArray> {
    let mut counts = vec![0i32; rows];
    for t in trues {
        for r in t.set_indices() {
            counts[r] += 1;
        }
    }
    let offsets = OffsetBuffer::<i32>::from_lengths(counts.iter().map(|c| *c as usize));
    let mut next: Vec<i32> = offsets[..rows].to_vec();
    let mut values = vec![0i32; *offsets.last().expect("offsets start at 0") as usize];
    for (position, t) in trues.iter().enumerate() {
        for r in t.set_indices() {
            values[next[r] as usize] = position as i32;
            next[r] += 1;
        }
    }
    Ok(ListArray::try_new(
        item(),
        offsets,
        Arc::new(Int32Array::from(values)),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::common::{DFSchema, ScalarValue};
    use datafusion::config::ConfigOptions;
    use datafusion::prelude::SessionContext;

    #[test]
    fn lists_the_rules_that_hold_in_each_row() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Utf8, true)]));
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let texts = ["d = 'a' OR d = 'c'", "d <> 'x'", "d LIKE '%a%' OR d = 'b'"];
        let rules = texts
            .iter()
            .map(|t| {
                let e = ctx.parse_sql_expr(t, &df_schema).unwrap();
                ctx.create_physical_expr(e, &df_schema).unwrap()
            })
            .collect();
        let udf = rule_positions_udf(
            schema.clone(),
            rules,
            texts.iter().map(|t| t.to_string()).collect(),
        );
        let d = StringArray::from(vec![Some("a"), Some("x"), None, Some("b")]);
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Int32(Some(0))),
                ColumnarValue::Array(Arc::new(d)),
            ],
            arg_fields: vec![
                Arc::new(Field::new("k", DataType::Int32, true)),
                Arc::new(Field::new("d", DataType::Utf8, true)),
            ],
            number_rows: 4,
            return_field: Arc::new(Field::new("r", DataType::List(item()), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let out = udf.invoke_with_args(args).unwrap().to_array(4).unwrap();
        let out = out.as_list::<i32>();
        let row = |i: usize| -> Vec<i32> {
            out.value(i)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .values()
                .to_vec()
        };
        assert_eq!(row(0), vec![0, 1, 2]);
        // NULL counts as false.
        assert_eq!(row(1), Vec::<i32>::new());
        assert_eq!(row(2), Vec::<i32>::new());
        assert_eq!(row(3), vec![1, 2]);
    }
}
