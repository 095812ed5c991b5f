//! Kubernetes' `$(VAR)` expansion in command, args and env values.
//!
//! Same rules as the kubelet: `$(NAME)` becomes the variable's value when it is defined
//! and stays as written when it is not; `$$` is an escaped `$`; any other `$` is kept.

/// Expands `$(NAME)` references in `input` with `lookup`.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<&'static str> {
        match name {
            "PORT" => Some("8080"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn expands_defined_variables() {
        assert_eq!(expand("--port=$(PORT)", vars), "--port=8080");
        assert_eq!(expand("$(PORT)$(PORT)", vars), "80808080");
        assert_eq!(expand("a$(EMPTY)b", vars), "ab");
    }

    #[test]
    fn keeps_undefined_and_escaped_references() {
        assert_eq!(expand("$(NOPE)", vars), "$(NOPE)");
        assert_eq!(expand("$$(PORT)", vars), "$(PORT)");
        assert_eq!(expand("cost $5 $", vars), "cost $5 $");
        assert_eq!(expand("$(PORT", vars), "$(PORT");
        assert_eq!(expand("$$$$", vars), "$$");
    }
}
