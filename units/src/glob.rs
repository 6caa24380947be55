//! Shell-style patterns as fleet matches them for `Conflicts=` and `Replaces=`: Go's
//! `path.Match`. A malformed pattern matches nothing (fleet ignored the error, so the
//! comparison simply failed).

/// One element of a compiled pattern; each but `Star` matches exactly one character.
enum Token {
    Literal(char),
    /// `?`: any character but `/`.
    AnyChar,
    /// `*`: any run of characters without `/`.
    Star,
    /// `[...]` or `[^...]`: inclusive ranges; single characters are ranges of one.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Reads one class character (`getEsc` in Go): `-` and `]` must be escaped, a `\` escapes
/// the next character, and the class must not end here.
fn class_char(chars: &[char], pos: &mut usize) -> Option<char> {
    let mut c = *chars.get(*pos)?;
    if c == '-' || c == ']' {
        return None;
    }
    if c == '\\' {
        *pos += 1;
        c = *chars.get(*pos)?;
    }
    *pos += 1;
    // Go rejects a class cut off right after a character.
    if *pos >= chars.len() {
        return None;
    }
    Some(c)
}

/// Compiles `pattern`, or `None` when Go would report `ErrBadPattern`.
fn compile(pattern: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match chars[pos] {
            '*' => {
                pos += 1;
                // Consecutive stars mean the same as one.
                if !matches!(tokens.last(), Some(Token::Star)) {
                    tokens.push(Token::Star);
                }
            }
            '?' => {
                pos += 1;
                tokens.push(Token::AnyChar);
            }
            '\\' => {
                let c = *chars.get(pos + 1)?;
                pos += 2;
                tokens.push(Token::Literal(c));
            }
            '[' => {
                pos += 1;
                let negated = chars.get(pos) == Some(&'^');
                if negated {
                    pos += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    if chars.get(pos) == Some(&']') && !ranges.is_empty() {
                        pos += 1;
                        break;
                    }
                    let lo = class_char(&chars, &mut pos)?;
                    let mut hi = lo;
                    if chars.get(pos) == Some(&'-') {
                        pos += 1;
                        hi = class_char(&chars, &mut pos)?;
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => {
                pos += 1;
                tokens.push(Token::Literal(c));
            }
        }
    }
    Some(tokens)
}

fn matches_one(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyChar => c != '/',
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
        Token::Star => false,
    }
}

/// Whether `name` matches the shell pattern `pattern`, with Go's `path.Match` rules: `*` is
/// any run of non-`/` characters, `?` one non-`/` character, `[a-z]` / `[^a-z]` a class,
/// `\` escapes. The whole name must match. Malformed patterns match nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let Some(tokens) = compile(pattern) else {
        return false;
    };
    let name: Vec<char> = name.chars().collect();
    // Dynamic programming over (token, position) keeps hostile patterns such as
    // "*a*a*a*a*b" linear in pattern × name instead of exponential.
    // next[j]: tokens[i + 1..] match name[j..]; cur[j]: tokens[i..] match name[j..].
    let n = name.len();
    let mut next = vec![false; n + 1];
    next[n] = true;
    for token in tokens.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match token {
                Token::Star => next[j] || (j < n && name[j] != '/' && cur[j + 1]),
                _ => j < n && matches_one(token, name[j]) && next[j + 1],
            };
        }
        next = cur;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            // literal must match the whole name
            ("foo.service", "foo.service", true),
            ("foo.service", "foo.service2", false),
            ("foo", "foo.service", false),
            // '*' matches any run, including an empty one
            ("foo*", "foo.service", true),
            ("foo*", "foo", true),
            ("*.service", "a.service", true),
            ("*.service", "a.socket", false),
            ("*", "anything@1.service", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            // a star does not cross '/'
            ("a*", "a/b", false),
            // '?' matches exactly one character
            ("foo?.service", "foo1.service", true),
            ("foo?.service", "foo.service", false),
            ("foo?.service", "foo12.service", false),
            // classes, ranges and negation ('^', as in Go; '!' is a literal)
            ("foo[0-9].service", "foo7.service", true),
            ("foo[0-9].service", "fooa.service", false),
            ("foo[^0-9].service", "fooa.service", true),
            ("foo[^0-9].service", "foo7.service", false),
            ("foo[abc]", "foob", true),
            ("foo[a-cx]", "foox", true),
            ("foo[!a]", "foo!", true),
            // escapes make metacharacters literal
            ("foo\\*", "foo*", true),
            ("foo\\*", "foox", false),
            ("[\\]]", "]", true),
            ("[\\-]", "-", true),
            // malformed patterns match nothing, not even themselves
            ("foo[", "foo[", false),
            ("foo\\", "foo\\", false),
            ("[]a]", "]", false),
            ("[-a]", "-", false),
            ("[a-]", "a", false),
            ("[a", "a", false),
            ("[^]", "x", false),
            // a malformed part after a matching prefix still fails (Go checks the rest)
            ("*x[", "abx", false),
            // instance globs as fleet users write them
            ("apache@*.service", "apache@1.service", true),
            ("apache@*.service", "apache.service", false),
            // empty pattern matches only the empty name
            ("", "", true),
            ("", "a", false),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn hostile_pattern_is_fast() {
        let pattern = "*a".repeat(50) + "b";
        let name = "a".repeat(256);
        assert!(!glob_match(&pattern, &name));
    }
}
