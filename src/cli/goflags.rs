//! Go-style flags: upstream's binaries use Go's `flag` package, which accepts
//! `-member-count=3` as well as `--member-count=3`. Operators have scripts full
//! of the single-dash form, so both binaries rewrite `-long-name[=v]` into
//! `--long-name[=v]` before clap sees the arguments, for the long names clap
//! knows. Short flags (`-o json`) and values are left alone.

/// Rewrite single-dash long flags that name one of `long_names`.
pub fn normalize<I>(args: I, long_names: &[String]) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    let mut out = Vec::new();
    let mut rest_are_positional = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_are_positional {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest_are_positional = true;
            out.push(arg);
            continue;
        }
        if let Some(body) = s.strip_prefix('-')
            && !body.starts_with('-')
            && body.len() > 1
        {
            let name = body.split('=').next().unwrap_or(body);
            if long_names.iter().any(|n| n == name) {
                out.push(format!("-{s}").into());
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// Every long flag name of a clap command and its subcommands.
pub fn long_names(cmd: &clap::Command) -> Vec<String> {
    let mut names = Vec::new();
    collect(cmd, &mut names);
    names
}

fn collect(cmd: &clap::Command, names: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if let Some(l) = arg.get_long() {
            names.push(l.to_string());
        }
        if let Some(aliases) = arg.get_all_aliases() {
            names.extend(aliases.iter().map(|a| a.to_string()));
        }
    }
    for sub in cmd.get_subcommands() {
        collect(sub, names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        let names = vec!["member-count".to_string(), "backup-store".to_string()];
        normalize(args.iter().map(Into::into), &names)
            .into_iter()
            .map(|s| s.into_string().expect("utf8"))
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "ctl",
                "-member-count=3",
                "-backup-store",
                "file:///x",
                "get"
            ]),
            [
                "ctl",
                "--member-count=3",
                "--backup-store",
                "file:///x",
                "get"
            ]
        );
    }

    #[test]
    fn short_flags_unknown_names_and_positionals_are_untouched() {
        assert_eq!(
            norm(&[
                "ctl",
                "-o",
                "json",
                "-nope",
                "--member-count",
                "3",
                "--",
                "-member-count"
            ]),
            [
                "ctl",
                "-o",
                "json",
                "-nope",
                "--member-count",
                "3",
                "--",
                "-member-count"
            ]
        );
    }
}
