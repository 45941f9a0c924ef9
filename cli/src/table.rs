//! Plain ASCII tables: a header row, columns padded to their widest cell,
//! two spaces between columns, no trailing spaces.

use crate::format::clean;
use crate::style::{Paint, Style};

/// One cell: its text (control characters removed) and an optional style,
/// applied after padding so colour never shifts the columns.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    text: String,
    style: Option<Style>,
}

impl Cell {
    pub(crate) fn styled(text: impl AsRef<str>, style: Style) -> Self {
        Self {
            text: clean(text.as_ref()),
            style: Some(style),
        }
    }
}

impl<T: AsRef<str>> From<T> for Cell {
    fn from(text: T) -> Self {
        Self {
            text: clean(text.as_ref()),
            style: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as lines, each ending in `\n`; `indent` spaces before each.
    pub(crate) fn render(&self, paint: Paint, indent: usize) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::styled(h, Style::Bold))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = " ".repeat(indent);
            for (column, cell) in row.iter().take(columns).enumerate() {
                let text = match cell.style {
                    Some(style) => paint.paint(style, &cell.text),
                    None => cell.text.clone(),
                };
                line.push_str(&text);
                if column + 1 < row.len().min(columns) {
                    let pad = widths[column] - cell.text.chars().count() + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "NOTE"]);
        table.row(vec!["1".into(), "alpha".into(), "".into()]);
        table.row(vec!["22".into(), "b".into(), "x\ny".into()]);
        let text = table.render(Paint { enabled: false }, 0);
        assert_eq!(text, "ID  NAME   NOTE\n1   alpha\n22  b      x y\n");
    }

    #[test]
    fn colour_does_not_shift_columns() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec![Cell::styled("ok", Style::Good), "x".into()]);
        let text = table.render(Paint { enabled: true }, 2);
        assert!(text.ends_with("  \x1b[32mok\x1b[0m  x\n"), "{text:?}");
    }
}
