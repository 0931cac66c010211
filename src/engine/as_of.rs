//! `current_date` in configuration expressions is the run's `--as-of` date (SPEC 11.7).
//!
//! DataFusion's own `current_date` reads the clock when a query starts; igaflow replaces it in
//! every session with a constant so a run evaluates date-bounded rules at one chosen date.

use chrono::NaiveDate;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct AsOfDate {
    days: i32,
    signature: Signature,
}

pub fn current_date_udf(as_of: NaiveDate) -> ScalarUDF {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    ScalarUDF::from(AsOfDate {
        days: (as_of - epoch).num_days() as i32,
        signature: Signature::nullary(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for AsOfDate {
    fn name(&self) -> &str {
        "current_date"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Date32(Some(self.days))))
    }
}
