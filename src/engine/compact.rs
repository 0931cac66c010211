//! Batches that are slices of a larger one are copied into buffers of their own before a sort
//! or a hash join's build side holds them.
//!
//! DataFusion accounts a held batch by the buffers it references. A hash aggregate emits its
//! groups as one batch cut into slices of `batch_size` rows, so a sort of a million groups
//! counts every slice at the size of the whole output: a hundred times the real memory. With
//! a fair memory pool that made sorts spill, or joins fail, at random (depending on what ran
//! beside them). [`CompactInputs`] puts a [`CompactExec`] under these operators; it copies a
//! batch only when its buffers are far larger than its rows.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, MutableArrayData, RecordBatch, make_array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::utils::memory::get_record_batch_memory_size;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

/// Batches smaller than this are passed as they are, whatever they reference.
const MIN_COPY_BYTES: usize = 1 << 20;

/// A copy of `batch` with compact buffers when it references far more memory than its rows
/// use (a slice of a larger batch); `batch` itself otherwise.
pub fn compact(batch: RecordBatch) -> Result<RecordBatch> {
    let held = get_record_batch_memory_size(&batch);
    if held < MIN_COPY_BYTES {
        return Ok(batch);
    }
    let mut needed = 0;
    for c in batch.columns() {
        needed += needed_bytes(c.as_ref())?;
    }
    if held <= 2 * needed {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| copy_array(c.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The bytes `array`'s rows would take in buffers of their own.
fn needed_bytes(array: &dyn Array) -> Result<usize> {
    // A view is 16 bytes; a value longer than 12 bytes lives in a data buffer.
    let outside = |views: &[u128]| -> usize {
        views
            .iter()
            .map(|v| (*v as u32) as usize)
            .filter(|&len| len > 12)
            .sum()
    };
    Ok(match array.data_type() {
        DataType::Utf8View => array.len() * 16 + outside(array.as_string_view().views()),
        DataType::BinaryView => array.len() * 16 + outside(array.as_binary_view().views()),
        _ => array.to_data().get_slice_memory_size()?,
    })
}

fn copy_array(array: &dyn Array) -> Result<ArrayRef> {
    match array.data_type() {
        // Views point into shared data buffers; `gc` copies only the bytes they use.
        DataType::Utf8View => Ok(Arc::new(array.as_string_view().gc())),
        DataType::BinaryView => Ok(Arc::new(array.as_binary_view().gc())),
        _ => {
            let data = array.to_data();
            let mut copy = MutableArrayData::new(vec![&data], false, data.len());
            copy.try_extend(0, 0, data.len())?;
            Ok(make_array(copy.freeze()))
        }
    }
}

/// Passes its input's batches through [`compact`].
#[derive(Debug)]
pub struct CompactExec {
    input: Arc<dyn ExecutionPlan>,
}

impl CompactExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for CompactExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompactExec")
    }
}

impl ExecutionPlan for CompactExec {
    fn name(&self) -> &str {
        "CompactExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(CompactExec::new(children.swap_remove(0))))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let output = input.map(|batch| batch.and_then(compact));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// Puts a [`CompactExec`] under every sort and under the build side of every hash join.
#[derive(Debug, Default)]
pub struct CompactInputs;

impl PhysicalOptimizerRule for CompactInputs {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let any: &dyn std::any::Any = node.as_ref();
            let wrap_first = any.is::<SortExec>() || any.is::<HashJoinExec>();
            if !wrap_first {
                return Ok(Transformed::no(node));
            }
            let mut children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            let compacted = |c: &Arc<dyn ExecutionPlan>| {
                let any: &dyn std::any::Any = c.as_ref();
                any.is::<CompactExec>()
            };
            if children.first().is_none_or(compacted) {
                return Ok(Transformed::no(node));
            }
            children[0] = Arc::new(CompactExec::new(children[0].clone()));
            let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
            Ok(Transformed::yes(node.replace_children(children, options)?))
        })
        .data()
    }

    fn name(&self) -> &str {
        "compact_inputs"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let values = StringArray::from_iter_values((0..rows).map(|i| format!("value number {i}")));
        RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap()
    }

    #[test]
    fn copies_slices_of_large_batches_only() {
        let whole = batch(200_000);
        let slice = whole.slice(8192, 8192);
        let held = get_record_batch_memory_size(&slice);
        let copy = compact(slice.clone()).unwrap();
        assert_eq!(copy, slice, "same rows");
        assert!(
            get_record_batch_memory_size(&copy) * 10 < held,
            "own, smaller buffers"
        );
        // A batch that uses its buffers, or a small one, is passed as it is.
        let own = batch(8192);
        let passed = compact(own.clone()).unwrap();
        assert!(
            passed.column(0).to_data().buffers()[1].as_ptr()
                == own.column(0).to_data().buffers()[1].as_ptr()
        );
    }

    #[tokio::test]
    async fn sorts_and_join_build_sides_read_compacted_input() {
        let ctx = crate::engine::context();
        ctx.register_batch("t", batch(10)).unwrap();
        let plan = ctx
            .sql("SELECT a.v FROM t a JOIN t b ON a.v = b.v ORDER BY a.v")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("SortExec") || line.contains("HashJoinExec") {
                assert!(lines[i + 1].contains("CompactExec"), "{text}");
            }
        }
        assert!(
            text.contains("SortExec") && text.contains("HashJoinExec"),
            "{text}"
        );
    }
}
