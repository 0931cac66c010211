//! `opaque(x)`: `x` unchanged, in a form the optimizer does not see through. A desired value
//! that is the owner's key column itself (`employee_id = "employee_id"`) would otherwise be
//! one column with the owner key under two names, and DataFusion 55 then derives the union of
//! two such frames an ordering on the value instead of the key and rejects its own plan
//! (`SanityCheckPlan … does not satisfy order requirements`).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct Opaque {
    signature: Signature,
}

pub fn opaque_udf() -> ScalarUDF {
    ScalarUDF::from(Opaque {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

impl ScalarUDFImpl for Opaque {
    fn name(&self) -> &str {
        "igaflow_opaque"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }
    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(args.args.remove(0))
    }
}
