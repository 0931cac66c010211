//! `scrub(text, needles, replacements)`: replaces every occurrence of each needle in `text`,
//! ignoring case, by the replacement at the same position (needles under six characters only
//! as whole words) (history anonymization, SPEC
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
    /// The text is a JSON document: a string value that is nothing but a needle whose
    /// replacement is NULL becomes `null` (`"old":"a@b.org"` → `"old":null`), as a cell would.
    json: bool,
}

pub fn scrub_udf() -> ScalarUDF {
    ScalarUDF::from(Scrub {
        signature: Signature::any(3, Volatility::Immutable),
        json: false,
    })
}

/// [`scrub_udf`] for a column of JSON documents (`scrub_json`, the provisioning orders'
/// attributes): a string value that is nothing but a needle replaced by NULL becomes `null`.
pub fn scrub_json_udf() -> ScalarUDF {
    ScalarUDF::from(Scrub {
        signature: Signature::any(3, Volatility::Immutable),
        json: true,
    })
}

/// Needles of at least this many characters are replaced inside words too (a login made of an
/// initial and the last name, `khartmann`); shorter ones only as whole words, so that a last
/// name `Ales` leaves `Sales` and a first name `Ted` leaves `terminated` alone.
const INSIDE_WORDS_FROM: usize = 6;

/// Replaces each needle (ASCII case ignored, plus the needle's Unicode lower and upper case
/// forms) by its replacement. Needles shorter than two characters are ignored; needles shorter
/// than [`INSIDE_WORDS_FROM`] characters match only where no letter or digit touches them.
pub fn replace_needles(text: &str, needles: &[(String, String)]) -> String {
    match automaton(needles) {
        Some(a) => a.replace(text),
        None => text.to_string(),
    }
}

/// Whether `bytes` holds any of the needles (same matching as [`replace_needles`]).
pub fn contains_needle(bytes: &[u8], needles: &[(String, String)]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    automaton(needles).is_some_and(|a| a.ac.find_iter(text.as_ref()).any(|m| a.accepts(&text, &m)))
}

/// Whether `text` is nothing but `needle` (ASCII case and surrounding spaces ignored): a needle
/// whose replacement is NULL makes such a text NULL, not empty.
pub fn is_whole_needle(text: &str, needle: &str) -> bool {
    let t = text.trim();
    needle.eq_ignore_ascii_case(t) && t.chars().count() >= 2
}

/// (needle, replacement) pairs.
type Needles = Vec<(String, String)>;

/// The matcher, and the replacement of each of its patterns and whether it matches inside words.
struct Automaton {
    ac: AhoCorasick,
    repl: Vec<String>,
    inside_words: Vec<bool>,
}

impl Automaton {
    /// A match counts when its needle may match inside words, or when no letter or digit
    /// touches it on either side.
    fn accepts(&self, text: &str, m: &aho_corasick::Match) -> bool {
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        self.inside_words[m.pattern().as_usize()]
            || (!word(text[..m.start()].chars().next_back())
                && !word(text[m.end()..].chars().next()))
    }

    fn replace(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.ac.find_iter(text) {
            if self.accepts(text, &m) {
                out.push_str(&text[last..m.start()]);
                out.push_str(&self.repl[m.pattern().as_usize()]);
                last = m.end();
            }
        }
        out.push_str(&text[last..]);
        out
    }
}

fn automaton(needles: &[(String, String)]) -> Option<Automaton> {
    let mut pats = Vec::new();
    let mut repl = Vec::new();
    let mut inside_words = Vec::new();
    for (n, r) in needles {
        let chars = n.chars().count();
        if chars < 2 {
            continue;
        }
        for form in [n.clone(), n.to_lowercase(), n.to_uppercase()] {
            if !pats.contains(&form) {
                pats.push(form);
                repl.push(r.clone());
                inside_words.push(chars >= INSIDE_WORDS_FROM);
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
    Some(Automaton {
        ac,
        repl,
        inside_words,
    })
}

impl ScalarUDFImpl for Scrub {
    fn name(&self) -> &str {
        match self.json {
            true => "scrub_json",
            false => "scrub",
        }
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
            if (0..n.len()).any(|j| n.is_valid(j) && r.is_null(j) && is_whole_needle(t, n.value(j)))
            {
                out.append_null();
                continue;
            }
            let mut pairs: Vec<(String, String)> = (0..n.len())
                .filter(|&j| n.is_valid(j))
                .map(|j| {
                    (
                        n.value(j).to_string(),
                        if r.is_valid(j) { r.value(j) } else { "" }.to_string(),
                    )
                })
                .collect();
            if self.json {
                // The quoted form is longer than the needle, so it wins where both match.
                pairs.extend(
                    (0..n.len())
                        .filter(|&j| n.is_valid(j) && r.is_null(j))
                        .filter_map(|j| serde_json::to_string(n.value(j)).ok())
                        .map(|quoted| (quoted, "null".to_string())),
                );
            }
            if cache.as_ref().is_none_or(|(p, _)| *p != pairs) {
                let ac = automaton(&pairs);
                cache = Some((pairs, ac));
            }
            match &cache.as_ref().expect("set above").1 {
                Some(a) => out.append_value(a.replace(t)),
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

    #[test]
    fn short_needles_match_whole_words_only() {
        let n = vec![
            ("Ted".to_string(), "ANONYMIZED".to_string()),
            ("Ales".to_string(), "ANONYMIZED".to_string()),
        ];
        // Inside other words they stay; as words (between punctuation, at the ends) they go.
        assert_eq!(
            replace_needles("terminated;Sales;G_Sales;talesx", &n),
            "terminated;Sales;G_Sales;talesx"
        );
        assert_eq!(
            replace_needles("Ted Ales;ted.ales@x.com;CN=Ales\\, Ted", &n),
            "ANONYMIZED ANONYMIZED;ANONYMIZED.ANONYMIZED@x.com;CN=ANONYMIZED\\, ANONYMIZED"
        );
        // A letter outside ASCII is a letter too.
        assert_eq!(replace_needles("Tedé éTed", &n), "Tedé éTed");
        assert!(!super::contains_needle(b"terminated, Sales", &n));
        assert!(super::contains_needle(b"\"Ted\"", &n));
    }
}
