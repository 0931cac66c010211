//! `value_hash(key, a, b, …)`: a 64-bit hash (as BIGINT) of the row's text values, NULL-aware,
//! under one of two secret keys (`key` 1 or 2) drawn at random when the process starts.
//!
//! Orders compare an owner's desired link values with its account's current ones through a
//! fingerprint per side: the count and `value_fingerprint(…)`, the aggregate below (wrapping
//! sums of the two halves of a 128-bit keyed hash of each row). Equal sets give equal
//! fingerprints, so only the accounts whose fingerprints differ are compared value by value;
//! see `sql/link_candidates.sql`. Desired scalar values are matched with the
//! current ones by the pair of hashes of (account, attribute, value), and only those without
//! a match are compared exactly (`scalar_candidates` in `sql/orders.sql`). The hashes are
//! SipHash under keys nobody knows, never stored: whoever names groups cannot craft values
//! whose sums hide a membership (with a fixed, public seed, sums of a non-cryptographic hash
//! can be made to collide).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use siphasher::sip128::{Hasher128, SipHasher13};

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
        Ok(ColumnarValue::Array(Arc::new(hashes)))
    }
}

/// `value_fingerprint(a, b, …)`, an aggregate: the wrapping sums of the two 64-bit halves of a
/// 128-bit keyed SipHash-1-3 of each row's text values (NULL-aware), as a struct of two BIGINTs
/// `h1` and `h2`. One pass over each row where two `sum(value_hash(k, …))` make two; the key is
/// drawn at random when the process starts, like [`value_hash_udf`]'s.
pub fn value_fingerprint_udaf() -> AggregateUDF {
    AggregateUDF::from(ValueFingerprint {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

fn fingerprint_key() -> (u64, u64) {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    *KEY.get_or_init(rand::random)
}

fn fingerprint_fields() -> Fields {
    Fields::from(vec![
        Field::new("h1", DataType::Int64, false),
        Field::new("h2", DataType::Int64, false),
    ])
}

/// Each row's 128-bit hash, as its two halves.
fn row_hashes(values: &[ArrayRef]) -> Result<Vec<(u64, u64)>> {
    let (k0, k1) = fingerprint_key();
    let rows = values.first().map_or(0, |a| a.len());
    let columns = values
        .iter()
        .map(|a| texts(a.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..rows)
        .map(|i| {
            let mut h = SipHasher13::new_with_keys(k0, k1);
            for c in &columns {
                c[i].hash(&mut h);
            }
            let out = h.finish128();
            (out.h1, out.h2)
        })
        .collect())
}

fn halves(states: &[ArrayRef]) -> Result<(&Int64Array, &Int64Array)> {
    match states {
        [a, b] => Ok((a.as_primitive(), b.as_primitive())),
        _ => Err(DataFusionError::Internal(
            "value_fingerprint: a state is two BIGINT columns".into(),
        )),
    }
}

fn fingerprint_array(h1: Vec<u64>, h2: Vec<u64>) -> Result<StructArray> {
    let as_i64 = |v: Vec<u64>| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            v.into_iter().map(|x| x as i64),
        ))
    };
    Ok(StructArray::try_new(
        fingerprint_fields(),
        vec![as_i64(h1), as_i64(h2)],
        None,
    )?)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ValueFingerprint {
    signature: Signature,
}

impl AggregateUDFImpl for ValueFingerprint {
    fn name(&self) -> &str {
        "value_fingerprint"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(fingerprint_fields()))
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(FingerprintAccumulator::default()))
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(fingerprint_fields().iter().cloned().collect())
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(FingerprintGroups::default()))
    }
}

/// The sums of one group (no GROUP BY): [`FingerprintGroups`] with group 0 only.
#[derive(Debug, Default)]
struct FingerprintAccumulator(FingerprintGroups);

impl FingerprintAccumulator {
    fn sums(&self) -> (u64, u64) {
        let first = |h: &[u64]| h.first().copied().unwrap_or(0);
        (first(&self.0.h1), first(&self.0.h2))
    }
}

impl Accumulator for FingerprintAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0
            .add(row_hashes(values)?.into_iter().map(|h| (0, h)), 1);
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (a, b) = halves(states)?;
        let rows = a.iter().zip(b.iter());
        let rows = rows.map(|(x, y)| (0, (x.unwrap_or(0) as u64, y.unwrap_or(0) as u64)));
        self.0.add(rows, 1);
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (h1, h2) = self.sums();
        Ok(vec![
            ScalarValue::Int64(Some(h1 as i64)),
            ScalarValue::Int64(Some(h2 as i64)),
        ])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let (h1, h2) = self.sums();
        Ok(ScalarValue::Struct(Arc::new(fingerprint_array(
            vec![h1],
            vec![h2],
        )?)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + 16 * self.0.h1.capacity()
    }
}

/// The sums of every group, by group index.
#[derive(Debug, Default)]
struct FingerprintGroups {
    h1: Vec<u64>,
    h2: Vec<u64>,
}

impl FingerprintGroups {
    fn add(&mut self, rows: impl Iterator<Item = (usize, (u64, u64))>, groups: usize) {
        self.h1.resize(groups, 0);
        self.h2.resize(groups, 0);
        for (g, (a, b)) in rows {
            self.h1[g] = self.h1[g].wrapping_add(a);
            self.h2[g] = self.h2[g].wrapping_add(b);
        }
    }
}

impl GroupsAccumulator for FingerprintGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let hashes = row_hashes(values)?;
        let kept = |i: &usize| opt_filter.is_none_or(|f| f.is_valid(*i) && f.value(*i));
        let rows = (0..hashes.len())
            .filter(kept)
            .map(|i| (group_indices[i], hashes[i]));
        self.add(rows, total_num_groups);
        Ok(())
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let (a, b) = halves(values)?;
        let rows = (0..a.len()).map(|i| (group_indices[i], (a.value(i) as u64, b.value(i) as u64)));
        self.add(rows, total_num_groups);
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (h1, h2) = (
            emit_to.take_needed(&mut self.h1),
            emit_to.take_needed(&mut self.h2),
        );
        Ok(Arc::new(fingerprint_array(h1, h2)?))
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (h1, h2) = (
            emit_to.take_needed(&mut self.h1),
            emit_to.take_needed(&mut self.h2),
        );
        let s = fingerprint_array(h1, h2)?;
        Ok(s.columns().to_vec())
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row its own group; a filtered-out row adds nothing (zero).
        let kept = |i: usize| opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
        let (h1, h2) = row_hashes(values)?
            .into_iter()
            .enumerate()
            .map(|(i, h)| if kept(i) { h } else { (0, 0) })
            .unzip();
        Ok(fingerprint_array(h1, h2)?.columns().to_vec())
    }
    fn size(&self) -> usize {
        (self.h1.capacity() + self.h2.capacity()) * std::mem::size_of::<u64>()
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

    /// Sets fingerprint alike whatever their row order, grouped or not, through the partial and
    /// final aggregation; a different set, a NULL or a moved value changes the fingerprint.
    #[tokio::test]
    async fn fingerprints_are_of_sets() {
        use datafusion::prelude::SessionConfig;
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        ctx.register_udaf(value_fingerprint_udaf());
        let b = ctx
            .sql(
                "WITH t(g, a, b) AS (VALUES
                   ('x', 'l', '1'), ('x', 'l', '2'), ('x', 'm', '3'),
                   ('y', 'm', '3'), ('y', 'l', '1'), ('y', 'l', '2'),
                   ('z', 'l', '1'), ('z', 'l', '2'),
                   ('n', 'l', '1'), ('n', 'l', '2'), ('n', 'm', NULL),
                   ('s', 'l', '1'), ('s', 'l', '2'), ('s', 'l', '3'))
                 SELECT g, fp['h1'] AS h1, fp['h2'] AS h2 FROM (
                   SELECT g, value_fingerprint(a, b) AS fp FROM t GROUP BY g
                   UNION ALL
                   SELECT 'all' AS g, value_fingerprint(a, b) AS fp FROM t WHERE g IN ('x', 'y')
                 ) ORDER BY g",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let b = datafusion::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
        let g = b.column(0).as_string::<i32>();
        let h1 = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let h2 = b
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let fp = |name: &str| {
            let i = (0..b.num_rows()).find(|&i| g.value(i) == name).unwrap();
            (h1.value(i), h2.value(i))
        };
        assert_eq!(fp("x"), fp("y"));
        assert_ne!(fp("x").0, fp("x").1);
        let (x, y) = (fp("x"), fp("y"));
        assert_eq!(fp("all"), (x.0.wrapping_add(y.0), x.1.wrapping_add(y.1)));
        for other in ["z", "n", "s"] {
            assert_ne!(fp("x"), fp(other), "{other}");
        }
    }
}
