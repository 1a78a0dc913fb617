//! The Prometheus text exposition format, as masters and workers serve it at `/metrics`.

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns the OpenMetrics text that `prometheus-client` writes into the Prometheus text format
/// (0.0.4) that Prometheus scrapes by default and `promtool check metrics` checks: a counter's
/// HELP and TYPE name its `_total` samples, and there are no `# UNIT` or `# EOF` lines.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_samples_and_openmetrics_lines_go() {
        let om = "# HELP flotilla_x Things.\n# TYPE flotilla_x counter\nflotilla_x_total 3\n\
                  # HELP flotilla_t Time.\n# TYPE flotilla_t gauge\n# UNIT flotilla_t seconds\nflotilla_t 1.0\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP flotilla_x_total Things.\n# TYPE flotilla_x_total counter\nflotilla_x_total 3\n\
             # HELP flotilla_t Time.\n# TYPE flotilla_t gauge\nflotilla_t 1.0\n"
        );
    }
}
