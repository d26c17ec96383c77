//! Where a field was written, by its path (`routes[0].rate_limits[1].rate`): the file read a
//! second time, as a tree of located nodes, only when an error needs a place.

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::cell::OnceCell;
use std::fmt;

/// A YAML value with the places of its keys and values.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

/// Visitor methods that take any scalar of these types as [`Node::Scalar`].
macro_rules! scalars {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E>(self, _: $ty) -> Result<Node, E> {
            Ok(Node::Scalar)
        })*
    };
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Node::Map(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(Node::Seq(out))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
                visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, e: A) -> Result<Node, A::Error> {
                let (IgnoredAny, _) = e.variant()?;
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a value was written, and the key naming it (in a mapping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub value: Location,
    pub key: Option<Location>,
    /// The first key of the value, when it is a non-empty mapping.
    pub first_key: Option<Location>,
}

/// The places of the values of one text (the text after `${VAR}` substitution).
pub(crate) struct Locator<'a> {
    text: &'a str,
    options: serde_saphyr::Options,
    /// The tree, and why the whole text is not well-formed YAML, if it is not.
    tree: OnceCell<(Option<Spanned<Node>>, Option<serde_saphyr::Error>)>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str, options: serde_saphyr::Options) -> Self {
        Locator {
            text,
            options,
            tree: OnceCell::new(),
        }
    }

    fn tree(&self) -> &(Option<Spanned<Node>>, Option<serde_saphyr::Error>) {
        let parse = |text: &str| serde_saphyr::from_str_with_options::<Spanned<Node>>(text, self.options.clone());
        self.tree.get_or_init(|| match parse(self.text) {
            Ok(tree) => (Some(tree), None),
            // The reader stops at the first problem, which may come before a syntax error
            // further down: the lines before the syntax error still place it.
            Err(e) => {
                let line = e.location().map_or(0, |l| l.line()) as usize;
                let before: String = self.text.split_inclusive('\n').take(line.saturating_sub(1)).collect();
                (parse(&before).ok(), Some(e))
            }
        })
    }

    /// Why the text is not well-formed YAML, if it is not: such a problem is reported before
    /// any refused value, wherever it is.
    pub(crate) fn syntax_error(&self) -> Option<&serde_saphyr::Error> {
        self.tree().1.as_ref()
    }

    /// The place of the value at `path`, if it was written.
    pub(crate) fn find(&self, path: &str) -> Option<Place> {
        let tree = self.tree().0.as_ref()?;
        let (mut node, mut key, mut rest) = (tree, None, path);
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let (index, tail) = after.split_once(']')?;
                let Node::Seq(items) = &node.value else { return None };
                (node, key, rest) = (items.get(index.parse::<usize>().ok()?)?, None, tail);
                continue;
            }
            let name = rest.strip_prefix('.').unwrap_or(rest);
            let Node::Map(entries) = &node.value else { return None };
            // Keys may hold dots (upstream names): the longest key that ends at a segment wins.
            let (k, v) = entries
                .iter()
                .filter(|(k, _)| {
                    name.strip_prefix(k.value.as_str())
                        .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
                })
                .max_by_key(|(k, _)| k.value.len())?;
            (node, key, rest) = (v, Some(k.referenced), &name[k.value.len()..]);
        }
        let first_key = match &node.value {
            Node::Map(entries) => entries.first().map(|(k, _)| k.referenced),
            _ => None,
        };
        Some(Place {
            value: node.referenced,
            key,
            first_key,
        })
    }

    /// ` (line N)` for the value at `path`, or `otherwise` when it was not written.
    pub(crate) fn line_of(&self, path: &str, otherwise: &str) -> String {
        match self.find(path) {
            Some(p) if p.value.line() > 0 => format!(" (line {})", p.value.line()),
            _ => otherwise.to_string(),
        }
    }
}
