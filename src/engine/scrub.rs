//! `scrub(text, needles, replacements)`: replaces every occurrence of each needle in `text`,
//! ignoring case, by the replacement at the same position (history anonymization, SPEC
//! section 9). NULL needles leave the text as it is; longer needles win over shorter ones that
//! overlap them (an email before the first name it contains). A NULL replacement blanks the
//! occurrence, and a text that is nothing but such a needle becomes NULL (an email column
//! anonymized to NULL stays NULL wherever the email was copied whole).

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use datafusion::arrow::array::{Array, AsArray, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct Scrub {
    signature: Signature,
}

pub fn scrub_udf() -> ScalarUDF {
    ScalarUDF::from(Scrub {
        signature: Signature::any(3, Volatility::Immutable),
    })
}

/// Replaces each needle (ASCII case ignored, plus the needle's Unicode lower and upper case
/// forms) by its replacement. Needles shorter than two characters are ignored.
pub fn replace_needles(text: &str, needles: &[(String, String)]) -> String {
    match automaton(needles) {
        Some((ac, repl)) => ac.replace_all(text, &repl),
        None => text.to_string(),
    }
}

/// Whether `bytes` holds any of the needles (same matching as [`replace_needles`]).
pub fn contains_needle(bytes: &[u8], needles: &[(String, String)]) -> bool {
    automaton(needles).is_some_and(|(ac, _)| ac.is_match(bytes))
}

/// (needle, replacement) pairs.
type Needles = Vec<(String, String)>;

/// The matcher and the replacement of each of its patterns.
type Automaton = (AhoCorasick, Vec<String>);

fn automaton(needles: &[(String, String)]) -> Option<Automaton> {
    let mut pats = Vec::new();
    let mut repl = Vec::new();
    for (n, r) in needles {
        if n.chars().count() < 2 {
            continue;
        }
        for form in [n.clone(), n.to_lowercase(), n.to_uppercase()] {
            if !pats.contains(&form) {
                pats.push(form);
                repl.push(r.clone());
            }
        }
    }
    if pats.is_empty() {
        return None;
    }
    let ac = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(&pats)
        .ok()?;
    Some((ac, repl))
}

impl ScalarUDFImpl for Scrub {
    fn name(&self) -> &str {
        "scrub"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let lists = |i: usize| {
            arrays[i].as_list_opt::<i32>().cloned().ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "scrub: argument {} must be a list of strings, got {}",
                    i + 1,
                    arrays[i].data_type()
                ))
            })
        };
        let needles = lists(1)?;
        let repls = lists(2)?;
        let mut out = StringBuilder::with_capacity(text.len(), text.values().len());
        // Consecutive rows usually share one owner's needles: keep the last automaton.
        let mut cache: Option<(Needles, Option<Automaton>)> = None;
        for i in 0..text.len() {
            if text.is_null(i) {
                out.append_null();
                continue;
            }
            if needles.is_null(i) {
                out.append_value(text.value(i));
                continue;
            }
            let n = needles.value(i);
            let r = repls.value(i);
            let n = datafusion::arrow::compute::cast(&n, &DataType::Utf8)?;
            let r = datafusion::arrow::compute::cast(&r, &DataType::Utf8)?;
            let (n, r): (&StringArray, &StringArray) = (n.as_string(), r.as_string());
            let t = text.value(i);
            if (0..n.len()).any(|j| {
                n.is_valid(j)
                    && r.is_null(j)
                    && n.value(j).eq_ignore_ascii_case(t.trim())
                    && t.trim().chars().count() >= 2
            }) {
                out.append_null();
                continue;
            }
            let pairs: Vec<(String, String)> = (0..n.len())
                .filter(|&j| n.is_valid(j))
                .map(|j| {
                    (
                        n.value(j).to_string(),
                        if r.is_valid(j) { r.value(j) } else { "" }.to_string(),
                    )
                })
                .collect();
            if cache.as_ref().is_none_or(|(p, _)| *p != pairs) {
                let ac = automaton(&pairs);
                cache = Some((pairs, ac));
            }
            match &cache.as_ref().expect("set above").1 {
                Some((ac, repl)) => out.append_value(ac.replace_all(t, repl)),
                None => out.append_value(t),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::replace_needles;

    #[test]
    fn longest_needle_first_and_case_ignored() {
        let n = vec![
            ("Klaus".to_string(), "ANONYMIZED".to_string()),
            ("klaus.hartmann@contoso.com".to_string(), String::new()),
            ("Hartmann".to_string(), "ANONYMIZED".to_string()),
        ];
        assert_eq!(
            replace_needles(
                "CN=Hartmann\\, Klaus;KLAUS.HARTMANN@contoso.com;khartmann",
                &n
            ),
            "CN=ANONYMIZED\\, ANONYMIZED;;kANONYMIZED"
        );
        assert_eq!(
            replace_needles("Müller MÜLLER", &[("Müller".into(), "X".into())]),
            "X X"
        );
        assert_eq!(replace_needles("a b", &[("a".into(), "X".into())]), "a b");
    }
}
