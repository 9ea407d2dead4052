//! Human-readable table of slices for `migserve slices`.

use super::Slice;

/// Renders slices as an aligned text table.
pub fn render(slices: &[Slice]) -> String {
    let header = [
        "ID", "KIND", "PROFILE", "MEMORY", "SMS", "GPU", "GI/CI", "CPUS", "UUID",
    ];
    let rows: Vec<[String; 9]> = slices
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                format!("{:?}", s.kind).to_lowercase(),
                s.profile.clone(),
                s.memory_bytes
                    .map(|b| format!("{:.1} GB", b as f64 / 1e9))
                    .unwrap_or_else(|| "-".into()),
                opt(s.sm_count),
                opt(s.gpu_index),
                match (s.gpu_instance, s.compute_instance) {
                    (Some(gi), Some(ci)) => format!("{gi}/{ci}"),
                    _ => "-".into(),
                },
                cpu_list(&s.cpus),
                s.uuid.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `0-2,5` style list of cores.
fn cpu_list(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return "-".into();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut start = cpus[0];
    let mut prev = cpus[0];
    for &c in &cpus[1..] {
        if c == prev + 1 {
            prev = c;
            continue;
        }
        parts.push(range(start, prev));
        start = c;
        prev = c;
    }
    parts.push(range(start, prev));
    parts.join(",")
}

fn range(a: usize, b: usize) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(super::cpu_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(super::cpu_list(&[3]), "3");
        assert_eq!(super::cpu_list(&[]), "-");
    }
}
