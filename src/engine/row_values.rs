//! `row_values(a, b, …)`: the row's values as one comparable, NULL-aware binary value.
//!
//! Synchronization compares a staged row with the stored one over all declared columns. With
//! this function the comparison is one fixed SQL predicate (`s._values <> c._values`) instead of
//! an `IS DISTINCT FROM` chain generated per entity; Arrow's row format encodes NULL apart from
//! every value, so equal encodings mean equal rows, NULL-safely.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowValues {
    signature: Signature,
}

pub fn row_values_udf() -> ScalarUDF {
    ScalarUDF::from(RowValues {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for RowValues {
    fn name(&self) -> &str {
        "row_values"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        let fields = arrays
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let rows = converter.convert_columns(&arrays)?;
        let mut out = BinaryBuilder::with_capacity(rows.num_rows(), rows.size());
        for row in rows.iter() {
            out.append_value(row.as_ref());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
