//! Where a value sits in a YAML file, from the parser's own spans (marked-yaml), so a semantic
//! error points at the line of the value it is about — stage 2's `min_confidence` at stage 2's
//! line, not at the first line that happens to contain the same text.

use marked_yaml::Node;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

/// The spans of one YAML document.
#[derive(Debug)]
pub struct Spans {
    root: Option<Node>,
}

impl Spans {
    /// Parses `text`; a document that does not parse has no spans (the typed parser reports
    /// its syntax error with a line already).
    pub fn parse(text: &str) -> Spans {
        Spans {
            root: marked_yaml::parse_yaml(0, text).ok(),
        }
    }

    /// The 1-based line of the node at `path`, or of its deepest ancestor that exists.
    pub fn line(&self, path: &[Step<'_>]) -> Option<usize> {
        let mut node = self.root.as_ref()?;
        let mut line = start_line(node);
        for step in path {
            let next = match (step, node) {
                (Step::Key(k), Node::Mapping(m)) => m.get_node(k),
                (Step::Index(i), Node::Sequence(s)) => s.get(*i),
                _ => None,
            };
            match next {
                Some(n) => {
                    node = n;
                    line = start_line(n).or(line);
                }
                None => break,
            }
        }
        line
    }
}

fn start_line(node: &Node) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_own_lines() {
        let text = "name: p\nstages:\n  - name: a\n    gate:\n      min_confidence: 0.5\n  - name: b\n    gate:\n      min_confidence: 1.5\n";
        let s = Spans::parse(text);
        let at = |path: &[Step<'_>]| s.line(path);
        use Step::{Index, Key};
        assert_eq!(at(&[Key("stages"), Index(0)]), Some(3));
        assert_eq!(at(&[Key("stages"), Index(1)]), Some(6));
        assert_eq!(
            at(&[Key("stages"), Index(1), Key("gate"), Key("min_confidence")]),
            Some(8)
        );
        // A missing key falls back to its nearest ancestor.
        assert_eq!(
            at(&[Key("stages"), Index(1), Key("route"), Key("models")]),
            Some(6)
        );
        assert_eq!(Spans::parse("a: [unclosed").line(&[Key("a")]), None);
    }
}
