//! `${VAR}` and `${VAR:-default}` in paths of `pipeline.toml` (`exports`, `[store] uri`).
//!
//! Deployments point one pipeline at different export drops (test, production, day 1 / day 2 of
//! the demo) without copying the file; only paths are expanded, never expressions.

/// Expands environment references; an unset variable without a default is an error naming it.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (Ok(v), None) => out.push_str(&v),
            (Err(_), None) => {
                return Err(format!(
                    "environment variable `{name}` used in `{s}` is not set (set it, or write `${{{name}:-default}}`)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_defaults_and_leaves_plain_text() {
        assert_eq!(expand_env("a/b").unwrap(), "a/b");
        assert_eq!(
            expand_env("x/${IGAFLOW_TEST_SURELY_UNSET:-day1}/hr").unwrap(),
            "x/day1/hr"
        );
        assert!(expand_env("${IGAFLOW_TEST_SURELY_UNSET}").is_err());
        assert!(expand_env("${OOPS").is_err());
    }
}
