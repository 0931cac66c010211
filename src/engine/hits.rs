//! `true_positions(c0, c1, …)`: the list of the positions (0-based) of the arguments that are
//! TRUE in a row (NULL counts as false). The role model and classification evaluate hundreds
//! of rules in one scan of the owners; a row matches a few of them, so the result is small,
//! where an array of one CASE per rule would hold a (mostly NULL) element per rule and row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int32Array, ListArray};
use datafusion::arrow::buffer::{BooleanBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct TruePositions {
    signature: Signature,
}

pub fn true_positions_udf() -> ScalarUDF {
    ScalarUDF::from(TruePositions {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

fn item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Int32, false))
}

impl ScalarUDFImpl for TruePositions {
    fn name(&self) -> &str {
        "true_positions"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        // The TRUE bits of each argument (validity and value both set).
        let mut trues: Vec<BooleanBuffer> = Vec::with_capacity(args.args.len());
        for (i, a) in args.args.iter().enumerate() {
            let a = a.to_array(rows)?;
            let b = a.as_boolean_opt().ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "true_positions: argument {} must be boolean, got {}",
                    i + 1,
                    a.data_type()
                ))
            })?;
            trues.push(match b.nulls() {
                Some(n) => b.values() & n.inner(),
                None => b.values().clone(),
            });
        }
        let mut counts = vec![0i32; rows];
        for t in &trues {
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
        let list = ListArray::try_new(item(), offsets, Arc::new(Int32Array::from(values)), None)?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::BooleanArray;
    use datafusion::common::ScalarValue;
    use datafusion::config::ConfigOptions;

    #[test]
    fn lists_the_true_arguments_of_each_row() {
        let a = BooleanArray::from(vec![Some(true), Some(false), None, Some(true)]);
        let b = BooleanArray::from(vec![Some(true), None, Some(true), Some(false)]);
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::new(a)),
                ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))),
                ColumnarValue::Array(Arc::new(b)),
            ],
            arg_fields: (0..3)
                .map(|_| Arc::new(Field::new("x", DataType::Boolean, true)))
                .collect(),
            number_rows: 4,
            return_field: Arc::new(Field::new("r", DataType::List(item()), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let out = TruePositions {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
        .invoke_with_args(args)
        .unwrap()
        .to_array(4)
        .unwrap();
        let out = out.as_list::<i32>();
        let row = |i: usize| -> Vec<i32> {
            out.value(i)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .values()
                .to_vec()
        };
        assert_eq!(row(0), vec![0, 2]);
        assert_eq!(row(1), Vec::<i32>::new());
        assert_eq!(row(2), vec![2]);
        assert_eq!(row(3), vec![0]);
    }
}
