//! Topic selectors (draft-dunglas-mercure-07, "Topic Selectors"): `*` (every topic), a URI
//! template (RFC 6570) that the topic matches, or a string the topic equals.
//!
//! RFC 6570 defines how a template expands, not how a string matches one; the reference hub
//! (and the Go library it uses) turns a template into a regular expression, and so does this
//! module, the same way: the template's grammar is checked by the `iri-string` crate (an
//! invalid template is compared as a string, as the reference hub does), then each literal is
//! matched as itself and each expression as what its operator can expand to, each variable
//! optional:
//!
//! | expression | matches |
//! |---|---|
//! | `{var}`, `{a,b}` | unreserved characters and percent-escapes (never a `/`), `,` between values |
//! | `{+var}`, `{#var}` | reserved characters too (`/`, `?`, …); `#` first for `{#var}` |
//! | `{/var}`, `{.var}` | `/` or `.` and a value, per variable |
//! | `{;var}`, `{?var}`, `{&var}` | `;name=value`, `?name=value`, `&name=value` |
//!
//! A `*` (explode) modifier lets a variable repeat; a `:n` prefix modifier is matched as the
//! whole value. No crate on crates.io matches templates beyond Level 2 (the one that matches at
//! all, `uri-template-ex`, misreads `{/var}`, which Mercure's own documentation uses for the
//! subscriptions API), hence this small translation; `docs/architecture.md` says so.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use iri_string::template::UriTemplateStr;
use regex::Regex;

/// The longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// The most variables one template may hold: a template is compiled, and this bounds what
/// compiling it costs.
pub const MAX_TEMPLATE_VARIABLES: usize = 32;

/// The most URI templates one list of selectors may hold (a subscription's, a token's claim).
pub const MAX_TEMPLATES: usize = 16;

/// One topic selector.
#[derive(Clone)]
pub enum Selector {
    /// `*`: every topic.
    Any,
    /// A topic, compared as a string.
    Exact(Arc<str>),
    /// An RFC 6570 template, compiled (shared by every subscriber that gives it).
    Template(Arc<str>, Arc<Regex>),
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Exact(s) => write!(f, "{s:?}"),
            Selector::Template(s, _) => write!(f, "template {s:?}"),
        }
    }
}

const UNRESERVED: &str = r"A-Za-z0-9\-._~";
const RESERVED: &str = r":/?#\[\]@!$&'()*+,;=";

/// Whether every `%` of `s` begins a percent-escape: two hexadecimal digits follow it.
fn whole_escapes(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().filter(|&(_, &b)| b == b'%').all(|(i, _)| {
        bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    })
}

/// The regular expression a template matches (see the module documentation).
fn template_regex(template: &str) -> String {
    let mut re = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let Some(close) = rest[open..].find('}').map(|c| c + open) else { break };
        expression(&mut re, &rest[open + 1..close]);
        rest = &rest[close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    re
}

fn expression(re: &mut String, expression: &str) {
    let (operator, list) = match expression.chars().next() {
        Some(c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&')) => (c, &expression[1..]),
        _ => ('\0', expression),
    };
    let chars = if matches!(operator, '+' | '#') { format!("{UNRESERVED}{RESERVED}") } else { UNRESERVED.to_owned() };
    let value = format!("(?:[{chars}]|%[0-9A-Fa-f]{{2}})*");
    let (first, separator, named) = match operator {
        '+' => ("", ",", false),
        '#' => ("#", ",", false),
        '.' => (".", ".", false),
        '/' => ("/", "/", false),
        ';' => (";", ";", true),
        '?' => ("?", "&", true),
        '&' => ("&", "&", true),
        _ => ("", ",", false),
    };
    for (i, variable) in list.split(',').enumerate() {
        let explode = variable.ends_with('*');
        let name = variable.trim_end_matches('*').split(':').next().unwrap_or_default();
        let one = match (named, explode) {
            (true, false) => format!("{}(?:={value})?", regex::escape(name)),
            // Exploded named pairs carry their own keys.
            (true, true) => format!("[{UNRESERVED}]+(?:={value})?"),
            (false, _) => value.clone(),
        };
        let item = if explode { format!("{one}(?:{}{one})*", regex::escape(separator)) } else { one };
        let lead = if i == 0 { first } else { separator };
        re.push_str(&format!("(?:{}{item})?", regex::escape(lead)));
    }
}

impl Selector {
    /// Reads a selector.
    ///
    /// # Errors
    ///
    /// Empty, or longer than [`MAX_SELECTOR_LEN`]: the reason.
    pub fn parse(selector: &str, cache: &TemplateCache) -> Result<Selector, String> {
        if selector.is_empty() {
            return Err("an empty topic selector".to_owned());
        }
        if selector.len() > MAX_SELECTOR_LEN {
            return Err(format!("a topic selector longer than {MAX_SELECTOR_LEN} bytes"));
        }
        if selector == "*" {
            return Ok(Selector::Any);
        }
        // A `%` must begin a whole escape in a template (RFC 6570, 2.1). Checked first: iri-string
        // 0.7.14 panics on a `%` followed by a multi-byte character (found by fuzzing).
        if !selector.contains('{') || !whole_escapes(selector) || UriTemplateStr::new(selector).is_err() {
            return Ok(Selector::Exact(selector.into()));
        }
        let variables = selector.split('{').skip(1).map(|e| e.split('}').next().unwrap_or_default().split(',').count()).sum::<usize>();
        if variables > MAX_TEMPLATE_VARIABLES {
            return Err(format!("a template with more than {MAX_TEMPLATE_VARIABLES} variables"));
        }
        Ok(Selector::Template(selector.into(), cache.compile(selector)?))
    }

    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Exact(s) => &**s == topic,
            Selector::Template(_, regex) => regex.is_match(topic),
        }
    }

    /// The selector as it was given.
    pub fn as_str(&self) -> &str {
        match self {
            Selector::Any => "*",
            Selector::Exact(s) | Selector::Template(s, _) => s,
        }
    }
}

/// Compiled templates, shared: ten thousand subscribers giving one template hold one
/// compiled expression (and its match caches) between them. Holds at most
/// [`TemplateCache::CAPACITY`] templates; when full, it starts again empty (subscribers keep
/// the templates they hold), so that clients sending ever new templates cannot make it grow.
/// Each template compiles to at most 64 KiB, with at most 64 KiB of match cache.
#[derive(Debug, Default)]
pub struct TemplateCache {
    compiled: Mutex<HashMap<Arc<str>, Arc<Regex>>>,
}

impl TemplateCache {
    /// The most templates kept.
    pub const CAPACITY: usize = 1000;

    /// The compiled form of `template` (a valid RFC 6570 template).
    fn compile(&self, template: &str) -> Result<Arc<Regex>, String> {
        if let Some(regex) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(template) {
            return Ok(regex.clone());
        }
        let regex = regex::RegexBuilder::new(&template_regex(template))
            .size_limit(64 * 1024)
            .dfa_size_limit(64 * 1024)
            .build()
            .map_err(|e| format!("the template {:?} is too complex to match: {e}", template.chars().take(64).collect::<String>()))?;
        let regex = Arc::new(regex);
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if compiled.len() >= TemplateCache::CAPACITY {
            compiled.clear();
        }
        compiled.insert(template.into(), regex.clone());
        Ok(regex)
    }
}

/// Several selectors: a topic is selected when one of them selects it.
#[derive(Debug, Clone)]
pub struct Selectors {
    /// Selectors compared as strings, `*` among them.
    exact: Box<[Arc<str>]>,
    any: bool,
    templates: Box<[Selector]>,
}

impl Selectors {
    /// Reads `selectors`.
    ///
    /// # Errors
    ///
    /// One of them is invalid ([`Selector::parse`]).
    pub fn parse<S: AsRef<str>>(selectors: &[S], cache: &TemplateCache) -> Result<Selectors, String> {
        let mut exact = Vec::new();
        let mut templates = Vec::new();
        let mut any = false;
        for selector in selectors {
            match Selector::parse(selector.as_ref(), cache)? {
                Selector::Any => any = true,
                Selector::Exact(s) => exact.push(s),
                template => templates.push(template),
            }
            if templates.len() > MAX_TEMPLATES {
                return Err(format!("more than {MAX_TEMPLATES} URI templates"));
            }
        }
        Ok(Selectors { exact: exact.into(), any, templates: templates.into() })
    }

    /// Whether one of the selectors selects `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.any || self.exact.iter().any(|s| &**s == topic) || self.templates.iter().any(|t| t.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selects(selector: &str, topic: &str) -> bool {
        Selector::parse(selector, &TemplateCache::default()).unwrap().matches(topic)
    }

    #[test]
    fn star_selects_every_topic() {
        assert!(selects("*", "https://example.com/books/1"));
        assert!(selects("*", "anything"));
    }

    #[test]
    fn a_plain_selector_is_compared_as_a_string() {
        assert!(selects("https://example.com/books/1", "https://example.com/books/1"));
        assert!(!selects("https://example.com/books/1", "https://example.com/books/10"));
        assert!(!selects("https://example.com/books", "https://example.com/books/1"));
    }

    #[test]
    fn a_simple_variable_does_not_span_a_slash() {
        assert!(selects("https://example.com/books/{id}", "https://example.com/books/1"));
        assert!(selects("https://example.com/books/{id}", "https://example.com/books/a%2Fb"));
        assert!(!selects("https://example.com/books/{id}", "https://example.com/books/1/reviews"));
        assert!(!selects("https://example.com/books/{id}", "https://example.com/authors/1"));
    }

    #[test]
    fn reserved_expansion_spans_slashes() {
        assert!(selects("/chat/{+rest}", "/chat/room/1"));
        assert!(selects("https://example.com/{+path}", "https://example.com/a/b?c=d"));
        assert!(!selects("/chat/{+rest}", "/other/room"));
    }

    #[test]
    fn path_segment_expansion_matches_as_mercure_documents_it() {
        let subscriptions = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";
        assert!(selects(subscriptions, "/.well-known/mercure/subscriptions"));
        assert!(selects(subscriptions, "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fa"));
        assert!(selects(subscriptions, "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fa/urn%3Auuid%3A1"));
        assert!(!selects(subscriptions, "/.well-known/mercure/subscriptions/a/b/c"));
        assert!(!selects(subscriptions, "/.well-known/mercure/other"));
    }

    #[test]
    fn level_3_and_4_operators_match_what_they_expand_to() {
        assert!(selects("/search{?q,lang}", "/search?q=cat&lang=en"));
        assert!(selects("/search{?q,lang}", "/search"));
        assert!(!selects("/search{?q}", "/search?other=1"));
        assert!(selects("/files{/path*}", "/files/a/b/c"));
        assert!(selects("/file{.ext}", "/file.json"));
        assert!(!selects("/file{.ext}", "/file.tar/x"));
        assert!(selects("/m{;x,y}", "/m;x=1;y=2"));
        assert!(selects("/a/{x,y}", "/a/1,2"));
        assert!(selects("/a{?q}{&r}", "/a?q=1&r=2"));
        assert!(selects("/a/{x:3}", "/a/abc"));
        assert!(selects("/a{#frag}", "/a#x/y"));
    }

    #[test]
    fn literal_characters_of_a_template_are_not_patterns() {
        assert!(selects("https://example.com/a.b/{id}", "https://example.com/a.b/1"));
        assert!(!selects("https://example.com/a.b/{id}", "https://example.com/aXb/1"));
        assert!(!selects("https://example.com/books/{id}", "https://example.com/books/1?x"));
    }

    #[test]
    fn an_invalid_template_is_compared_as_a_string() {
        // Not RFC 6570 (an unclosed expression): the reference hub compares it as a string.
        assert!(selects("/a/{b", "/a/{b"));
        assert!(!selects("/a/{b", "/a/x"));
    }

    #[test]
    fn templates_too_costly_to_compile_are_refused() {
        let cache = TemplateCache::default();
        let many = "/a".to_owned() + &"{+a*,b*}".repeat(20);
        assert!(Selector::parse(&many, &cache).unwrap_err().contains("variables"));
        let cache_filled_and_cleared = (0..TemplateCache::CAPACITY + 10).all(|n| Selector::parse(&format!("/t{n}/{{id}}"), &cache).is_ok());
        assert!(cache_filled_and_cleared);
        assert!(cache.compiled.lock().unwrap().len() <= TemplateCache::CAPACITY);
    }

    #[test]
    fn empty_and_oversized_selectors_are_refused() {
        let cache = TemplateCache::default();
        assert!(Selector::parse("", &cache).is_err());
        assert!(Selector::parse(&"a".repeat(MAX_SELECTOR_LEN + 1), &cache).is_err());
    }

    #[test]
    fn several_selectors_select_the_union() {
        let cache = TemplateCache::default();
        let selectors = Selectors::parse(&["/a", "/b/{id}"], &cache).unwrap();
        assert!(selectors.matches("/a"));
        assert!(selectors.matches("/b/2"));
        assert!(!selectors.matches("/c"));
        assert!(Selectors::parse(&["/a", "*"], &cache).unwrap().matches("/z"));
        // One compiled template for every subscriber that gives it.
        let again = Selectors::parse(&["/b/{id}"], &cache).unwrap();
        match (&selectors.templates[0], &again.templates[0]) {
            (Selector::Template(_, a), Selector::Template(_, b)) => assert!(Arc::ptr_eq(a, b)),
            _ => panic!("templates"),
        }
    }
}

#[cfg(test)]
mod fuzz_found {
    use super::*;

    #[test]
    fn a_percent_that_begins_no_escape_is_a_plain_selector_not_a_panic() {
        let cache = TemplateCache::default();
        for selector in ["%\u{FFFD}{o\u{FFFD}", "/a%{id}", "/a/%é{id}", "/a/{id}%"] {
            let parsed = Selector::parse(selector, &cache).unwrap();
            assert!(matches!(parsed, Selector::Exact(_)), "{selector}");
            assert!(parsed.matches(selector));
        }
        assert!(matches!(Selector::parse("/caf%C3%A9/{id}", &cache).unwrap(), Selector::Template(..)));
    }
}
