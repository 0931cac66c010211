//! `value_hash(key, a, b, …)`: a 64-bit hash (as BIGINT) of the row's text values, NULL-aware,
//! under one of two secret keys (`key` 1 or 2) drawn at random when the process starts.
//!
//! Orders compare an owner's desired link values with its account's current ones through a
//! fingerprint per side: the count and two wrapping sums of these hashes (one per key). Equal
//! sets give equal fingerprints, so only the accounts whose fingerprints differ are compared
//! value by value; see `sql/link_candidates.sql`. Desired scalar values are matched with the
//! current ones by the pair of hashes of (account, attribute, value), and only those without
//! a match are compared exactly (`scalar_candidates` in `sql/orders.sql`). The hashes are
//! SipHash under keys nobody knows, never stored: whoever names groups cannot craft values
//! whose sums hide a membership (with a fixed, public seed, sums of a non-cryptographic hash
//! can be made to collide).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The two keyed hashers of this process.
fn keys() -> &'static [RandomState; 2] {
    static KEYS: OnceLock<[RandomState; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [RandomState::new(), RandomState::new()])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ValueHash {
    signature: Signature,
}

pub fn value_hash_udf() -> ScalarUDF {
    ScalarUDF::from(ValueHash {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// The texts of a string column (`Utf8` and `Utf8View` hash alike).
fn texts(a: &dyn Array) -> Result<Vec<Option<&str>>> {
    Ok(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().collect(),
        DataType::Utf8View => a.as_string_view().iter().collect(),
        other => {
            return Err(DataFusionError::Execution(format!(
                "value_hash: arguments after the key number must be text, got {other}"
            )));
        }
    })
}

impl ScalarUDFImpl for ValueHash {
    fn name(&self) -> &str {
        "value_hash"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let state = match args.args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(k @ 1..=2)))) => {
                &keys()[*k as usize - 1]
            }
            _ => {
                return Err(DataFusionError::Execution(
                    "value_hash: the first argument must be the key number, 1 or 2".into(),
                ));
            }
        };
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args[1..])?;
        let columns = arrays
            .iter()
            .map(|a| texts(a.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let hashes: Int64Array = (0..rows)
            .map(|i| {
                let mut h = state.build_hasher();
                for c in &columns {
                    c[i].hash(&mut h);
                }
                Some(h.finish() as i64)
            })
            .collect();
        Ok(ColumnarValue::Array(std::sync::Arc::new(hashes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// Equal texts hash alike whatever their string type; the key, the order and NULL count.
    #[tokio::test]
    async fn hashes_values_not_types() {
        let ctx = SessionContext::new();
        ctx.register_udf(value_hash_udf());
        let b = ctx
            .sql(
                "SELECT value_hash(CAST(1 AS BIGINT), 'a', 'b') AS x,
                        value_hash(CAST(1 AS BIGINT), arrow_cast('a', 'Utf8View'), 'b') AS y,
                        value_hash(CAST(2 AS BIGINT), 'a', 'b') AS other_key,
                        value_hash(CAST(1 AS BIGINT), 'b', 'a') AS swapped,
                        value_hash(CAST(1 AS BIGINT), 'a', CAST(NULL AS VARCHAR)) AS with_null,
                        value_hash(CAST(1 AS BIGINT), 'a', '') AS with_empty",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let v = |i: usize| {
            b[0].column(i)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0)
        };
        assert_eq!(v(0), v(1));
        assert_ne!(v(0), v(2));
        assert_ne!(v(0), v(3));
        assert_ne!(v(4), v(5));
    }
}
