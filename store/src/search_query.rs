//! The user query language of `GET /v1/search`, parsed by a bounded grammar of our own: the raw
//! text never reaches Tantivy's query parser, whose grammar recurses once per nesting level with
//! no limit (1.6 KB of parentheses overflowed a node's stack, issue 11).
//!
//! The grammar:
//! - words are ANDed; a word is a run of characters other than whitespace, `"`, `(` and `)`, and
//!   goes through the "chorus" analyzer: one token is a term, several (`北京大学`, `10:30`,
//!   `e-mail`) are a phrase; a word without tokens (`*`, `!!!`) is dropped;
//! - `"quoted text"` is a phrase (an unterminated quote runs to the end of the query);
//! - `-x` and `NOT x` exclude `x`, `+x` requires it (the default); `AND` changes nothing;
//!   `OR` separates alternatives, each an AND of its clauses (AND binds tighter than OR);
//! - `( … )` groups; a `)` without its `(` is ignored and open groups close at the end;
//! - a colon, brackets, `*`, `~`, `^` and any other syntax are plain text: there are no fields,
//!   ranges, sets, regexes, wildcards, boosts or slops;
//! - a clause group of exclusions only (`-spam`) matches everything else, as Tantivy's parser
//!   did;
//! - an excluded clause is wrapped in `ExcludedClause`, which Tantivy's exclusion can only
//!   `seek` forward: Tantivy 0.27's phrase scorer asserts on the `seek_danger` calls its
//!   exclusion makes (`-"hello world"` panicked, found by the fuzz target
//!   `store/tests/fuzz_search_query.rs`).
//!
//! Guarantees, for any input text:
//! - parsing never recurses: one pass over the text with an explicit stack of open groups, so its
//!   time and memory are linear in the query's length;
//! - a query longer than `limits.max_search_query_bytes`, nesting parentheses deeper than
//!   `limits.max_search_query_depth`, or holding more than `limits.max_search_query_clauses`
//!   words, phrases, groups and operators is refused with [`SearchError::BadQuery`] naming the
//!   bound, before any of it is analysed; so the built query's depth and size, and the cost of
//!   executing it, are bounded by the configuration.

use tantivy::query::{
    AllQuery, BooleanQuery, EnableScoring, Explanation, Occur, PhraseQuery, Query, Scorer,
    TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

use crate::search_index::SearchError;

/// The bounds a search query must keep: the `[limits]` keys `max_search_query_bytes`,
/// `max_search_query_depth` and `max_search_query_clauses`, which the caller copies from its
/// configuration (this crate does not read the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchQueryLimits {
    /// Longest query, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of parentheses.
    pub max_depth: usize,
    /// Most words, quoted phrases, groups and operators.
    pub max_clauses: usize,
}

impl Default for SearchQueryLimits {
    /// The bounds of the default configuration (the defaults of `[limits]` in
    /// `chorus_core::config`; the search crate checks that the two agree).
    fn default() -> Self {
        SearchQueryLimits {
            max_bytes: 1024,
            max_depth: 8,
            max_clauses: 64,
        }
    }
}

/// One lexical unit of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexeme<'text> {
    Word(&'text str),
    Phrase(&'text str),
    Open,
    Close,
    Require,
    Exclude,
    And,
    Or,
}

/// Whether `character` ends a word.
fn ends_word(character: char) -> bool {
    character.is_whitespace() || matches!(character, '"' | '(' | ')')
}

/// Cuts `text` into lexemes (one pass, no recursion).
fn lexemes(text: &str) -> Vec<Lexeme<'_>> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(character) = rest.chars().next() {
        let after_character = &rest[character.len_utf8()..];
        if character.is_whitespace() {
            rest = after_character;
            continue;
        }
        match character {
            '(' => {
                found.push(Lexeme::Open);
                rest = after_character;
            }
            ')' => {
                found.push(Lexeme::Close);
                rest = after_character;
            }
            '"' => {
                let (phrase, after_phrase) = match after_character.find('"') {
                    Some(end) => (&after_character[..end], &after_character[end + 1..]),
                    None => (after_character, ""),
                };
                found.push(Lexeme::Phrase(phrase));
                rest = after_phrase;
            }
            '+' | '-' => {
                // a prefix only when something follows it directly; a lone sign is nothing
                if after_character
                    .chars()
                    .next()
                    .is_some_and(|next| !next.is_whitespace())
                {
                    found.push(if character == '+' {
                        Lexeme::Require
                    } else {
                        Lexeme::Exclude
                    });
                }
                rest = after_character;
            }
            _ => {
                let end = rest.find(ends_word).unwrap_or(rest.len());
                let word = &rest[..end];
                found.push(match word {
                    "AND" => Lexeme::And,
                    "OR" => Lexeme::Or,
                    "NOT" => Lexeme::Exclude,
                    _ => Lexeme::Word(word),
                });
                rest = &rest[end..];
            }
        }
    }
    found
}

/// A parenthesised group (or the whole query) being read.
struct OpenGroup {
    /// The finished alternatives (each an AND of clauses), joined by OR.
    alternatives: Vec<Vec<(Occur, Box<dyn Query>)>>,
    /// The clauses of the alternative being read.
    current: Vec<(Occur, Box<dyn Query>)>,
    /// How the enclosing group takes this one (`-(…)` excludes it).
    occur_in_parent: Occur,
}

impl OpenGroup {
    fn new(occur_in_parent: Occur) -> OpenGroup {
        OpenGroup {
            alternatives: Vec::new(),
            current: Vec::new(),
            occur_in_parent,
        }
    }

    /// Ends the alternative being read (at an `OR`).
    fn end_alternative(&mut self) {
        if !self.current.is_empty() {
            self.alternatives.push(std::mem::take(&mut self.current));
        }
    }

    /// The group's query, `None` when it holds nothing searchable.
    fn into_query(mut self) -> Option<Box<dyn Query>> {
        self.end_alternative();
        let mut alternatives: Vec<Box<dyn Query>> = self
            .alternatives
            .into_iter()
            .map(conjunction_query)
            .collect();
        match alternatives.len() {
            0 => None,
            1 => alternatives.pop(),
            _ => Some(Box::new(BooleanQuery::new(
                alternatives
                    .into_iter()
                    .map(|alternative| (Occur::Should, alternative))
                    .collect(),
            ))),
        }
    }
}

/// An excluded clause: the inner query's documents, through a scorer that only ever moves the
/// inner scorer forward with `advance` and `seek` (a target at or before its document answers from
/// where it stands), never with `seek_danger`, whose contract the exclusion and Tantivy's phrase
/// scorer disagree on.
#[derive(Debug)]
struct ExcludedClause(Box<dyn Query>);

impl Clone for ExcludedClause {
    fn clone(&self) -> Self {
        ExcludedClause(self.0.box_clone())
    }
}

impl Query for ExcludedClause {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludedWeight(self.0.weight(enable_scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor);
    }
}

/// The weight of an [`ExcludedClause`].
struct ExcludedWeight(Box<dyn Weight>);

impl Weight for ExcludedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(ForwardOnlyScorer(self.0.scorer(reader, boost)?)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

/// See [`ExcludedClause`]; `seek_danger` is the trait's default, built on this `seek`.
struct ForwardOnlyScorer(Box<dyn Scorer>);

impl DocSet for ForwardOnlyScorer {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        let doc = self.0.doc();
        if doc >= target {
            return doc;
        }
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }
}

impl Scorer for ForwardOnlyScorer {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}

/// The AND of `clauses` (not empty); exclusions alone match every other document.
fn conjunction_query(clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = clauses
        .into_iter()
        .map(|(occur, query)| match occur {
            Occur::MustNot => (occur, Box::new(ExcludedClause(query)) as Box<dyn Query>),
            Occur::Must | Occur::Should => (occur, query),
        })
        .collect();
    if clauses.iter().all(|(occur, _)| *occur == Occur::MustNot) {
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    if clauses.len() == 1
        && clauses[0].0 == Occur::Must
        && let Some((_, query)) = clauses.pop()
    {
        return query;
    }
    Box::new(BooleanQuery::new(clauses))
}

/// The query for one word or phrase: a term, a phrase of its tokens, or `None` without tokens.
fn text_query(
    text: &str,
    text_field: Field,
    analyzer: &mut TextAnalyzer,
) -> Option<Box<dyn Query>> {
    let mut terms: Vec<(usize, Term)> = Vec::new();
    let mut token_stream = analyzer.token_stream(text);
    token_stream.process(&mut |token| {
        terms.push((
            token.position,
            Term::from_field_text(text_field, &token.text),
        ));
    });
    if terms.len() > 1 {
        return Some(Box::new(PhraseQuery::new_with_offset(terms)));
    }
    let (_, term) = terms.pop()?;
    Some(Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)))
}

/// Parses `text` into a query on `text_field`, analysing words and phrases with `analyzer`;
/// `Ok(None)` when nothing in it is searchable. Errors name the bound a query broke.
pub(crate) fn build_user_query(
    text: &str,
    limits: &SearchQueryLimits,
    text_field: Field,
    analyzer: &mut TextAnalyzer,
) -> Result<Option<Box<dyn Query>>, SearchError> {
    if text.trim().is_empty() {
        return Err(SearchError::BadQuery("the query is empty".into()));
    }
    if text.len() > limits.max_bytes {
        return Err(SearchError::BadQuery(format!(
            "the query is longer than {} bytes (limits.max_search_query_bytes)",
            limits.max_bytes
        )));
    }
    let query_lexemes = lexemes(text);
    let mut depth = 0usize;
    for lexeme in &query_lexemes {
        match lexeme {
            Lexeme::Open => depth += 1,
            Lexeme::Close => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > limits.max_depth {
            return Err(SearchError::BadQuery(format!(
                "the query nests parentheses deeper than {} levels \
                 (limits.max_search_query_depth)",
                limits.max_depth
            )));
        }
    }
    if query_lexemes.len() > limits.max_clauses {
        return Err(SearchError::BadQuery(format!(
            "the query has more than {} words, phrases, groups and operators \
             (limits.max_search_query_clauses)",
            limits.max_clauses
        )));
    }
    // the innermost open group is last; the whole query is the first
    let mut open_groups = vec![OpenGroup::new(Occur::Must)];
    let mut pending_occur: Option<Occur> = None;
    for lexeme in query_lexemes {
        match lexeme {
            Lexeme::Word(words) | Lexeme::Phrase(words) => {
                let occur = pending_occur.take().unwrap_or(Occur::Must);
                if let (Some(query), Some(group)) = (
                    text_query(words, text_field, analyzer),
                    open_groups.last_mut(),
                ) {
                    group.current.push((occur, query));
                }
            }
            Lexeme::Open => {
                let occur = pending_occur.take().unwrap_or(Occur::Must);
                open_groups.push(OpenGroup::new(occur));
            }
            Lexeme::Close => {
                pending_occur = None;
                if open_groups.len() > 1 {
                    close_innermost_group(&mut open_groups);
                }
            }
            Lexeme::Require => pending_occur = Some(Occur::Must),
            Lexeme::Exclude => pending_occur = Some(Occur::MustNot),
            Lexeme::And => {}
            Lexeme::Or => {
                pending_occur = None;
                if let Some(group) = open_groups.last_mut() {
                    group.end_alternative();
                }
            }
        }
    }
    while open_groups.len() > 1 {
        close_innermost_group(&mut open_groups);
    }
    Ok(open_groups.pop().and_then(OpenGroup::into_query))
}

/// Closes the innermost open group into its parent (`open_groups` holds at least two).
fn close_innermost_group(open_groups: &mut Vec<OpenGroup>) {
    let Some(closed) = open_groups.pop() else {
        return;
    };
    let occur = closed.occur_in_parent;
    if let (Some(query), Some(parent)) = (closed.into_query(), open_groups.last_mut()) {
        parent.current.push((occur, query));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexemes_cover_the_grammar() {
        assert_eq!(
            lexemes("a -b +(c OR \"d e\") NOT f AND g:h - ) \"open"),
            [
                Lexeme::Word("a"),
                Lexeme::Exclude,
                Lexeme::Word("b"),
                Lexeme::Require,
                Lexeme::Open,
                Lexeme::Word("c"),
                Lexeme::Or,
                Lexeme::Phrase("d e"),
                Lexeme::Close,
                Lexeme::Exclude,
                Lexeme::Word("f"),
                Lexeme::And,
                Lexeme::Word("g:h"),
                Lexeme::Close,
                Lexeme::Phrase("open"),
            ]
        );
        assert_eq!(
            lexemes("北京 e-mail"),
            [Lexeme::Word("北京"), Lexeme::Word("e-mail")]
        );
        assert!(lexemes(" \t\n-").is_empty());
    }

    fn parse(
        text: &str,
        limits: &SearchQueryLimits,
    ) -> Result<Option<Box<dyn Query>>, SearchError> {
        let (_, text_field) = {
            let mut builder = tantivy::schema::Schema::builder();
            let field = builder.add_text_field("text", tantivy::schema::TEXT);
            (builder.build(), field)
        };
        build_user_query(
            text,
            limits,
            text_field,
            &mut crate::tokenizer::chorus_text_analyzer(),
        )
    }

    fn refusal(text: &str, limits: &SearchQueryLimits) -> String {
        match parse(text, limits) {
            Err(SearchError::BadQuery(message)) => message,
            other => panic!(
                "{text:?} was not refused: {:?}",
                other.map(|query| query.is_some())
            ),
        }
    }

    #[test]
    fn each_bound_is_named_when_broken() {
        let limits = SearchQueryLimits {
            max_bytes: 100,
            max_depth: 2,
            max_clauses: 5,
        };
        assert!(refusal(&"a".repeat(101), &limits).contains("limits.max_search_query_bytes"));
        let at_the_bound = format!("{} {}", "a".repeat(49), "b".repeat(50));
        assert!(parse(&at_the_bound, &limits).unwrap().is_some());
        assert!(refusal("a b c d e f", &limits).contains("limits.max_search_query_clauses"));
        assert!(
            refusal("NOT NOT NOT NOT NOT a", &limits).contains("limits.max_search_query_clauses")
        );
        assert!(refusal("(((a", &limits).contains("limits.max_search_query_depth"));
        assert!(parse("((a))", &limits).unwrap().is_some());
        assert!(
            parse("()()", &limits).unwrap().is_none(),
            "empty groups are nothing"
        );
        assert!(refusal(" ", &limits).contains("empty"));
    }

    #[test]
    fn nothing_searchable_is_no_query() {
        let limits = SearchQueryLimits::default();
        for text in [
            "*",
            "!!!",
            "(((",
            ")",
            "-",
            "OR",
            "AND",
            "\"\"",
            "( ) OR ( )",
        ] {
            assert!(parse(text, &limits).unwrap().is_none(), "{text:?}");
        }
    }
}
