//! Column alignment for fleetctl's list output.
//!
//! fleet v1.0 printed every table through Go's `text/tabwriter`, set up as
//! `tabwriter.NewWriter(os.Stdout, 0, 8, 1, '\t', 0)`:
//! minwidth 0, tabwidth 8, padding 1, padchar `'\t'`, no flags. This module
//! reproduces that writer's output byte for byte (elastic tabstops).
//!
//! The rules, as in Go's implementation:
//!
//! * Input is split into cells. `'\t'` and `'\v'` end a cell; `'\n'` and
//!   `'\f'` end a cell and the line. The last cell of a line (the text before
//!   the newline) is *not* part of a column and is printed unpadded.
//! * Column `j` forms blocks: runs of consecutive lines that have a
//!   tab-terminated cell in column `j` (that is, more than `j + 1` cells).
//!   Blocks of column `j + 1` are nested inside blocks of column `j`. A line
//!   with fewer cells, an empty line, or a line without tabs ends a block.
//! * A block's width is `max(minwidth, max(cell runes + padding))`, i.e. the
//!   longest cell, counted in UTF-8 characters, plus one.
//! * With padchar `'\t'`, the width is rounded up to a multiple of tabwidth
//!   (`cellw`), and a cell of `textw` characters is followed by
//!   `ceil((cellw - textw) / 8)` tab characters; this is at least one tab.
//! * `'\f'` also flushes: lines after it never share a block with lines
//!   before it. It is written out as `'\n'`.
//! * Text after the final newline is the last line's last cell and is
//!   written without a newline; a trailing tab at that point is dropped.

/// Minimal cell width, including padding (`minwidth`).
const MIN_WIDTH: usize = 0;
/// Width of a tab in the output (`tabwidth`).
const TAB_WIDTH: usize = 8;
/// Padding added to a cell before computing the column width (`padding`).
const PADDING: usize = 1;

/// Go's text/tabwriter as fleetctl configures it: columns padded with tab characters.
///
/// Each inner `Vec` is one line's cells. They are joined with `'\t'` and the
/// line ends with `'\n'`, as `fmt.Fprintf(out, "%s\t%s\n", ...)` would write
/// them, and the whole text is then formatted as by [`format`].
#[allow(dead_code)]
pub fn render(lines: &[Vec<String>]) -> String {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line.join("\t"));
        text.push('\n');
    }
    format(&text)
}

/// Formats raw text exactly as Go's writer would, given `text` in
/// `Write` calls followed by `Flush()`.
#[allow(dead_code)]
pub fn format(text: &str) -> String {
    let mut writer = Writer::default();
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        // All terminators are ASCII, so `i` is always a char boundary.
        match byte {
            b'\t' | b'\x0b' | b'\n' | b'\x0c' => {
                let ncells = writer.terminate_cell(&text[start..i]);
                start = i + 1;
                if byte == b'\n' || byte == b'\x0c' {
                    writer.lines.push(Vec::new());
                    // Go flushes on '\f', and after a line with a single cell
                    // (which cannot affect later lines' columns).
                    if byte == b'\x0c' || ncells == 1 {
                        writer.flush();
                    }
                }
            }
            _ => {}
        }
    }
    // Flush(): a non-empty unterminated cell becomes the last line's last cell.
    let rest = &text[start..];
    if !rest.is_empty() {
        writer.terminate_cell(rest);
    }
    writer.flush();
    writer.out
}

struct Cell<'a> {
    text: &'a str,
    /// Width in runes.
    width: usize,
}

struct Writer<'a> {
    out: String,
    /// Buffered lines; the last one is the line currently being written.
    lines: Vec<Vec<Cell<'a>>>,
    /// Widths of the enclosing columns while formatting (a stack).
    widths: Vec<usize>,
}

impl Default for Writer<'_> {
    fn default() -> Self {
        Writer {
            out: String::new(),
            lines: vec![Vec::new()],
            widths: Vec::new(),
        }
    }
}

impl<'a> Writer<'a> {
    /// Adds a cell to the current line; returns the line's cell count.
    fn terminate_cell(&mut self, text: &'a str) -> usize {
        let line = self
            .lines
            .last_mut()
            .expect("there is always a current line");
        line.push(Cell {
            text,
            width: text.chars().count(),
        });
        line.len()
    }

    fn flush(&mut self) {
        self.format_lines(0, self.lines.len());
        self.lines = vec![Vec::new()];
    }

    /// Formats lines `line0..line1`, whose columns left of
    /// `self.widths.len()` are already known.
    fn format_lines(&mut self, mut line0: usize, line1: usize) {
        let column = self.widths.len();
        let mut this = line0;
        while this < line1 {
            // A cell exists in this column if it is not the line's last cell.
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            // Print the lines before this column block.
            self.write_lines(line0, this);
            line0 = this;

            // Column block: consecutive lines having a cell in this column.
            let mut width = MIN_WIDTH;
            while this < line1 && column + 1 < self.lines[this].len() {
                width = width.max(self.lines[this][column].width + PADDING);
                this += 1;
            }

            // Format the columns to the right within this block.
            self.widths.push(width);
            self.format_lines(line0, this);
            self.widths.pop();
            line0 = this;
        }
        self.write_lines(line0, line1);
    }

    fn write_lines(&mut self, line0: usize, line1: usize) {
        for i in line0..line1 {
            for (j, cell) in self.lines[i].iter().enumerate() {
                self.out.push_str(cell.text);
                if let Some(&cellw) = self.widths.get(j) {
                    self.out.push_str(&padding(cell.width, cellw));
                }
            }
            // The last buffered line is the unfinished one: no newline. (Any
            // text it had was made a cell by `format`, so nothing is pending.)
            if i + 1 != self.lines.len() {
                self.out.push('\n');
            }
        }
    }
}

/// Go's `writePadding` with padchar '\t': round the column width up to a
/// multiple of the tab width, then emit enough tabs to cover the rest.
fn padding(textw: usize, cellw: usize) -> String {
    let cellw = cellw.div_ceil(TAB_WIDTH) * TAB_WIDTH;
    let n = cellw - textw;
    "\t".repeat(n.div_ceil(TAB_WIDTH))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `render` vector: the rule it checks, the cells, the expected output.
    struct Case {
        rule: &'static str,
        lines: &'static [&'static [&'static str]],
        want: &'static str,
    }

    const RENDER_CASES: &[Case] = &[
        // list-machines. MACHINE column: widest "f1ee7001..." (11) + 1 = 12,
        // rounded up to 16. "MACHINE" (7): 16-7 = 9 -> ceil(9/8) = 2 tabs;
        // "f1ee7001..." (11): 5 -> 1 tab. IP column: widest 11 -> 16 as well;
        // "IP" (2): 14 -> 2 tabs. METADATA is each line's last cell: unpadded.
        Case {
            rule: "list-machines header and rows",
            lines: &[
                &["MACHINE", "IP", "METADATA"],
                &["f1ee7001...", "10.233.0.11", "hostname=node1"],
                &["4c3a0e5b...", "10.233.0.12", "-"],
            ],
            want: "MACHINE\t\tIP\t\tMETADATA\n\
                   f1ee7001...\t10.233.0.11\thostname=node1\n\
                   4c3a0e5b...\t10.233.0.12\t-\n",
        },
        // Unit name of 7 chars: width 7+1 = 8, already a multiple of 8, so
        // every UNIT cell gets one tab. MACHINE: "f1ee7001.../10.233.0.11"
        // (23) -> 24; "MACHINE" (7) needs 17 -> 3 tabs. ACTIVE: 6+1 -> 8.
        Case {
            rule: "list-units, longest unit name 7 chars (one tab stop)",
            lines: &[
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                &["a.timer", "f1ee7001.../10.233.0.11", "active", "waiting"],
            ],
            want: "UNIT\tMACHINE\t\t\tACTIVE\tSUB\n\
                   a.timer\tf1ee7001.../10.233.0.11\tactive\twaiting\n",
        },
        // Unit name of 8 chars: width 8+1 = 9 -> 16. "ab.timer": 16-8 = 8
        // -> 1 tab (which moves from column 8 to 16); "UNIT": 12 -> 2 tabs.
        Case {
            rule: "list-units, longest unit name 8 chars (crosses a tab stop)",
            lines: &[
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                &["ab.timer", "f1ee7001.../10.233.0.11", "active", "waiting"],
            ],
            want: "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\n\
                   ab.timer\tf1ee7001.../10.233.0.11\tactive\twaiting\n",
        },
        // Unit name of 15 chars: width 16 -> 16. "hello-1.service": 1 -> 1
        // tab; "UNIT": 12 -> 2 tabs.
        Case {
            rule: "list-units, longest unit name 15 chars (just fits 16)",
            lines: &[
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                &[
                    "hello-1.service",
                    "f1ee7001.../10.233.0.11",
                    "active",
                    "running",
                ],
            ],
            want: "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\n\
                   hello-1.service\tf1ee7001.../10.233.0.11\tactive\trunning\n",
        },
        // Unit name of 16 chars: width 17 -> 24. "hello-10.service": 8 -> 1
        // tab; "UNIT": 20 -> 3 tabs.
        Case {
            rule: "list-units, longest unit name 16 chars (next tab stop)",
            lines: &[
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                &[
                    "hello-10.service",
                    "f1ee7001.../10.233.0.11",
                    "active",
                    "running",
                ],
            ],
            want: "UNIT\t\t\tMACHINE\t\t\tACTIVE\tSUB\n\
                   hello-10.service\tf1ee7001.../10.233.0.11\tactive\trunning\n",
        },
        // All four lengths in one block, with "-" for missing values.
        // UNIT: width 17 -> 24; tabs = ceil((24 - len) / 8): "UNIT" 20 -> 3,
        // 7 -> 17 -> 3, 8 -> 16 -> 2, 15 -> 9 -> 2, 16 -> 8 -> 1.
        // MACHINE: 24; "-" 23 -> 3, 23 chars -> 1, "MACHINE" -> 3.
        // ACTIVE: "inactive" (8) -> 9 -> 16; 6 chars -> 10 -> 2, "inactive"
        // -> 1, "-" -> 15 -> 2. SUB is the last cell.
        Case {
            rule: "list-units, mixed name lengths and missing values",
            lines: &[
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                &["a.timer", "f1ee7001.../10.233.0.11", "active", "waiting"],
                &["ab.timer", "-", "inactive", "dead"],
                &[
                    "hello-1.service",
                    "4c3a0e5b.../10.233.0.12",
                    "failed",
                    "failed",
                ],
                &["hello-10.service", "-", "-", "-"],
            ],
            want: "UNIT\t\t\tMACHINE\t\t\tACTIVE\t\tSUB\n\
                   a.timer\t\t\tf1ee7001.../10.233.0.11\tactive\t\twaiting\n\
                   ab.timer\t\t-\t\t\tinactive\tdead\n\
                   hello-1.service\t\t4c3a0e5b.../10.233.0.12\tfailed\t\tfailed\n\
                   hello-10.service\t-\t\t\t-\t\t-\n",
        },
        // list-unit-files: UNIT 13+1 -> 16 ("UNIT" 2 tabs), HASH 7+1 -> 8
        // (1 tab each), DSTATE and STATE "launched" 8+1 -> 16 (headers 2
        // tabs, "launched" 1 tab). TARGET is the last cell.
        Case {
            rule: "list-unit-files header and row",
            lines: &[
                &["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
                &[
                    "hello.service",
                    "e55c0ae",
                    "launched",
                    "launched",
                    "f1ee7001.../10.233.0.11",
                ],
            ],
            want: "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
                   hello.service\te55c0ae\tlaunched\tlaunched\tf1ee7001.../10.233.0.11\n",
        },
        // A header alone is a one-line block: UNIT 5 -> 8, MACHINE 8 -> 8,
        // ACTIVE 7 -> 8, each followed by exactly one tab: unchanged.
        Case {
            rule: "header only, no rows",
            lines: &[&["UNIT", "MACHINE", "ACTIVE", "SUB"]],
            want: "UNIT\tMACHINE\tACTIVE\tSUB\n",
        },
        // Without tabs each line has only its last cell: there are no
        // columns at all, so nothing is padded.
        Case {
            rule: "one column only",
            lines: &[&["UNIT"], &["hello-10.service"], &["a"]],
            want: "UNIT\nhello-10.service\na\n",
        },
        // A cell of exactly 8 chars: width 8 + padding 1 = 9, rounded up to
        // 16; 16 - 8 = 8 -> ceil(8/8) = 1 tab, which advances the cursor from
        // column 8 to 16 (so the column *is* 16 wide, with a single tab).
        // The 3-char cell below it needs 13 -> 2 tabs to reach 16.
        Case {
            rule: "cell exactly one tab width wide",
            lines: &[&["ABCDEFGH", "x"], &["abc", "y"]],
            want: "ABCDEFGH\tx\nabc\t\ty\n",
        },
        // An empty cell is padded like any other: width 0 in a 16-wide
        // column ("longer-than-8" is 13 -> 14 -> 16) takes 16/8 = 2 tabs.
        Case {
            rule: "empty cell in a wide column",
            lines: &[&["", "x"], &["longer-than-8", "y"]],
            want: "\t\tx\nlonger-than-8\ty\n",
        },
        // A column of only empty cells still has width 0 + 1 = 1 -> 8:
        // one tab each. Empty last cells print nothing.
        Case {
            rule: "all-empty column and empty last cells",
            lines: &[&["", "x"], &["", ""]],
            want: "\tx\n\t\n",
        },
        // Column 0 spans all three lines (width 4 -> 8). Column 1 exists in
        // lines 1 and 3 only; line 2 ("aaa\t" + empty last cell) has no cell
        // there and splits it into two blocks, so "d" gets its own 8-wide
        // block (1 tab) instead of the 16 of "bbbbbbbbbb" (10 + 1).
        Case {
            rule: "line with fewer cells ends the column block",
            lines: &[&["a", "bbbbbbbbbb", "c"], &["aaa", ""], &["a", "d", "e"]],
            want: "a\tbbbbbbbbbb\tc\naaa\t\na\td\te\n",
        },
        // Same without the short line: one block, width 16, so "d" (1)
        // needs 15 -> 2 tabs.
        Case {
            rule: "consecutive lines share the column block",
            lines: &[&["a", "bbbbbbbbbb", "c"], &["a", "d", "e"]],
            want: "a\tbbbbbbbbbb\tc\na\td\t\te\n",
        },
        // An empty line has no tab-terminated cell: it ends every block.
        // "b" is padded for its own block (1 tab), not for the 12-char cell.
        Case {
            rule: "empty line ends column blocks",
            lines: &[&["aaaaaaaaaaaa", "x"], &[], &["b", "y"]],
            want: "aaaaaaaaaaaa\tx\n\nb\ty\n",
        },
        // Widths count runes: "ääää" is 4 chars (8 bytes) -> 5 -> 8, so "a"
        // gets 1 tab. Counting bytes would give 9 -> 16 and 2 tabs.
        Case {
            rule: "width is measured in UTF-8 characters",
            lines: &[&["ääää", "x"], &["a", "y"]],
            want: "ääää\tx\na\ty\n",
        },
        // No lines at all: no output.
        Case {
            rule: "no lines",
            lines: &[],
            want: "",
        },
    ];

    #[test]
    fn render_vectors() {
        for case in RENDER_CASES {
            let lines: Vec<Vec<String>> = case
                .lines
                .iter()
                .map(|line| line.iter().map(|cell| cell.to_string()).collect())
                .collect();
            assert_eq!(render(&lines), case.want, "{}", case.rule);
        }
    }

    #[test]
    fn format_vectors() {
        // (rule, raw input as written to Go's writer, expected output)
        let cases: &[(&str, &str, &str)] = &[
            // '\f' ends the line like '\n' (and is written as '\n'), but
            // also flushes: "b" is not in the 12-char cell's block.
            (
                "formfeed flushes and prints a newline",
                "aaaaaaaaaaaa\tx\x0cb\ty\n",
                "aaaaaaaaaaaa\tx\nb\ty\n",
            ),
            // Contrast: with '\n' the two lines share a 16-wide block and
            // "b" needs 15 -> 2 tabs.
            (
                "newline keeps the block",
                "aaaaaaaaaaaa\tx\nb\ty\n",
                "aaaaaaaaaaaa\tx\nb\t\ty\n",
            ),
            // '\v' terminates a cell like '\t' (the difference only matters
            // with DiscardEmptyColumns) and is replaced by padding tabs.
            ("vertical tab ends a cell", "ab\x0bc\n", "ab\tc\n"),
            // Text after the last newline is the last line's last cell: it
            // is written as is, without a newline, but still takes part in
            // the preceding line's block for its tab-terminated cells.
            (
                "unterminated last line",
                "abcdefghij\tx\na\tb",
                "abcdefghij\tx\na\t\tb",
            ),
            // Go quirk: at Flush a trailing empty cell is not terminated,
            // so "b" becomes the last cell and the final tab is dropped.
            ("trailing tab without newline", "a\tb\t", "a\tb"),
            ("empty input", "", ""),
            ("only newlines", "\n\n", "\n\n"),
        ];
        for (rule, input, want) in cases {
            assert_eq!(format(input), *want, "{rule}");
        }
    }

    #[test]
    fn padding_rule() {
        // (text width, column width including padding, tabs written)
        let cases: &[(usize, usize, usize)] = &[
            (0, 1, 1), // empty cell, narrowest column: 8 -> 1 tab
            (7, 8, 1), // 7 chars + 1 fits one tab stop exactly
            (8, 9, 1), // 8 chars: 9 -> 16, 16 - 8 = 8 -> 1 tab
            (4, 9, 2), // 9 -> 16, 12 left -> 2 tabs
            (15, 16, 1),
            (16, 17, 1), // 17 -> 24, 8 left -> 1 tab
            (7, 17, 3),  // 17 -> 24, 17 left -> 3 tabs
        ];
        for &(textw, cellw, tabs) in cases {
            assert_eq!(
                padding(textw, cellw),
                "\t".repeat(tabs),
                "{textw} in {cellw}"
            );
        }
    }
}
