//! The "chorus" Tantivy tokenizer: one analyzer for indexing and querying message text in
//! Chinese, Japanese, Korean and space-separated languages.
//!
//! The text is cut into runs of one script class, and each run is tokenized on its own:
//! - Han (Chinese characters, also Japanese kanji) runs go to jieba in search mode, so a word and
//!   its dictionary sub-words are all tokens ("北京大学" yields 北京, 大学 and 北京大学);
//! - kana (Hiragana/Katakana) and Hangul runs become overlapping character bigrams; a run of a
//!   single character yields that character;
//! - runs of other alphanumeric characters are words; everything else separates tokens.
//!
//! [`chorus_text_analyzer`] then drops over-long tokens, lowercases, and applies English stemming
//! ("meetings" and "meeting" both become "meet").
//!
//! Invariants:
//! - positions depend only on the run a token comes from, never on text around the run, so a
//!   query made of whole runs gets the same relative positions as the indexed text and phrase
//!   queries (the query parser builds one for every multi-token word) match;
//! - a word takes one position; a Han token is placed at the character offset of its start within
//!   the run (overlapping jieba tokens share positions) and the run takes as many positions as it
//!   has characters; bigram `i` of a kana/Hangul run is at offset `i`;
//! - positions never decrease, so every term's positions within a document are non-decreasing,
//!   as Tantivy's postings writer requires;
//! - offsets are byte offsets into the analysed text (used by the snippet highlighter).

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer,
    TokenizerManager,
};
use tantivy_jieba::JiebaTokenizer;

/// The name the analyzer is registered under, used by the schema's text field.
pub const CHORUS_TOKENIZER_NAME: &str = "chorus";

/// Tokens longer than this many bytes are dropped (they are never useful search terms).
const MAX_TOKEN_BYTES: usize = 100;

/// The script-aware base tokenizer (no lowercasing or stemming: see [`chorus_text_analyzer`]).
#[derive(Clone, Default)]
pub struct ChorusTokenizer {
    /// Segments Han runs; uses tantivy-jieba's process-wide dictionary, so clones are cheap.
    han_segmenter: JiebaTokenizer,
}

impl ChorusTokenizer {
    pub fn new() -> Self {
        ChorusTokenizer {
            han_segmenter: JiebaTokenizer::new(),
        }
    }
}

/// The full analyzer: [`ChorusTokenizer`], long-token removal, lowercasing, English stemming.
pub fn chorus_text_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ChorusTokenizer::new())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Registers [`chorus_text_analyzer`] under [`CHORUS_TOKENIZER_NAME`].
pub fn register_chorus_tokenizer(tokenizer_manager: &TokenizerManager) {
    tokenizer_manager.register(CHORUS_TOKENIZER_NAME, chorus_text_analyzer());
}

/// The class of a character, deciding how its run is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptClass {
    Han,
    Kana,
    Hangul,
    Word,
    Separator,
}

fn script_class(character: char) -> ScriptClass {
    let code_point = u32::from(character);
    let is_han = matches!(
        code_point,
        0x3005 | 0x3007 // 々 〇
            | 0x3400..=0x4DBF // Extension A
            | 0x4E00..=0x9FFF // Unified Ideographs
            | 0xF900..=0xFAFF // Compatibility Ideographs
            | 0x20000..=0x2FA1F // Extensions B–F, Compatibility Supplement
            | 0x30000..=0x3134F // Extensions G–H
    );
    if is_han {
        return ScriptClass::Han;
    }
    let is_kana = matches!(
        code_point,
        0x3041..=0x309F // Hiragana
            | 0x30A0..=0x30FA | 0x30FC..=0x30FF // Katakana without the middle dot ・
            | 0x31F0..=0x31FF // Katakana Phonetic Extensions
            | 0xFF66..=0xFF9F // Halfwidth Katakana
            | 0x1B000..=0x1B16F // Kana Supplement and Extension A
    );
    if is_kana {
        return ScriptClass::Kana;
    }
    let is_hangul = matches!(
        code_point,
        0x1100..=0x11FF // Jamo
            | 0x3130..=0x318F // Compatibility Jamo
            | 0xA960..=0xA97F // Jamo Extended-A
            | 0xAC00..=0xD7AF // Syllables
            | 0xD7B0..=0xD7FF // Jamo Extended-B
            | 0xFFA0..=0xFFDC // Halfwidth Hangul
    );
    if is_hangul {
        return ScriptClass::Hangul;
    }
    if character.is_alphanumeric() {
        return ScriptClass::Word;
    }
    ScriptClass::Separator
}

/// A maximal stretch of characters of one class.
struct ScriptRun<'text> {
    class: ScriptClass,
    /// Byte offset of the run in the whole text, to make token offsets absolute.
    byte_start: usize,
    text: &'text str,
}

fn script_runs(text: &str) -> Vec<ScriptRun<'_>> {
    let mut runs = Vec::new();
    let mut current: Option<(ScriptClass, usize)> = None;
    for (byte_index, character) in text.char_indices() {
        let class = script_class(character);
        match current {
            Some((current_class, _)) if current_class == class => {}
            Some((current_class, run_start)) => {
                runs.push(ScriptRun {
                    class: current_class,
                    byte_start: run_start,
                    text: &text[run_start..byte_index],
                });
                current = Some((class, byte_index));
            }
            None => current = Some((class, byte_index)),
        }
    }
    if let Some((class, run_start)) = current {
        runs.push(ScriptRun {
            class,
            byte_start: run_start,
            text: &text[run_start..],
        });
    }
    runs
}

impl ChorusTokenizer {
    /// Tokenizes the whole text eagerly (messages are short).
    fn tokenize(&mut self, text: &str) -> Vec<Token> {
        let mut tokens = Vec::new();
        let mut next_position = 0usize;
        for run in script_runs(text) {
            match run.class {
                ScriptClass::Separator => {}
                ScriptClass::Word => {
                    tokens.push(Token {
                        offset_from: run.byte_start,
                        offset_to: run.byte_start + run.text.len(),
                        position: next_position,
                        text: run.text.to_owned(),
                        position_length: 1,
                    });
                    next_position += 1;
                }
                ScriptClass::Han => {
                    next_position += self.push_han_tokens(&run, next_position, &mut tokens);
                }
                ScriptClass::Kana | ScriptClass::Hangul => {
                    next_position += push_bigram_tokens(&run, next_position, &mut tokens);
                }
            }
        }
        tokens
    }

    /// Pushes jieba's tokens of a Han run; returns the positions the run takes.
    fn push_han_tokens(
        &mut self,
        run: &ScriptRun<'_>,
        base_position: usize,
        tokens: &mut Vec<Token>,
    ) -> usize {
        let first_new_token = tokens.len();
        let mut jieba_stream = self.han_segmenter.token_stream(run.text);
        while let Some(jieba_token) = jieba_stream.next() {
            tokens.push(Token {
                offset_from: run.byte_start + jieba_token.offset_from,
                offset_to: run.byte_start + jieba_token.offset_to,
                position: base_position + jieba_token.position,
                text: jieba_token.text.clone(),
                position_length: jieba_token.position_length.max(1),
            });
        }
        // Search mode emits sub-words after the word that contains them: restore position order
        // so that no term's positions go backwards.
        tokens[first_new_token..].sort_by_key(|token| token.position);
        run.text.chars().count()
    }
}

/// Pushes the character bigrams of a kana or Hangul run; returns the positions the run takes.
fn push_bigram_tokens(run: &ScriptRun<'_>, base_position: usize, tokens: &mut Vec<Token>) -> usize {
    let character_offsets: Vec<(usize, char)> = run.text.char_indices().collect();
    if let [(_, only_character)] = character_offsets.as_slice() {
        tokens.push(Token {
            offset_from: run.byte_start,
            offset_to: run.byte_start + run.text.len(),
            position: base_position,
            text: only_character.to_string(),
            position_length: 1,
        });
        return 1;
    }
    for (bigram_index, pair) in character_offsets.windows(2).enumerate() {
        let (first_offset, first_character) = pair[0];
        let (second_offset, second_character) = pair[1];
        let bigram_end = second_offset + second_character.len_utf8();
        tokens.push(Token {
            offset_from: run.byte_start + first_offset,
            offset_to: run.byte_start + bigram_end,
            position: base_position + bigram_index,
            text: [first_character, second_character].iter().collect(),
            position_length: 1,
        });
    }
    character_offsets.len().saturating_sub(1)
}

impl Tokenizer for ChorusTokenizer {
    type TokenStream<'text> = ChorusTokenStream;

    fn token_stream<'text>(&'text mut self, text: &'text str) -> ChorusTokenStream {
        ChorusTokenStream {
            remaining: self.tokenize(text).into_iter(),
            current: Token::default(),
        }
    }
}

/// The tokens of one text, computed up front.
pub struct ChorusTokenStream {
    /// Tokens not yet yielded.
    remaining: std::vec::IntoIter<Token>,
    /// The token `advance` moved to.
    current: Token,
}

impl TokenStream for ChorusTokenStream {
    fn advance(&mut self) -> bool {
        let Some(token) = self.remaining.next() else {
            return false;
        };
        self.current = token;
        true
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzed(text: &str) -> Vec<(String, usize)> {
        let mut analyzer = chorus_text_analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut tokens = Vec::new();
        while let Some(token) = stream.next() {
            tokens.push((token.text.clone(), token.position));
        }
        tokens
    }

    fn texts(text: &str) -> Vec<String> {
        analyzed(text)
            .into_iter()
            .map(|(token_text, _)| token_text)
            .collect()
    }

    #[test]
    fn chinese_is_segmented_into_words() {
        let tokens = texts("今天我们去北京开会");
        assert!(tokens.contains(&"北京".to_owned()), "{tokens:?}");
        assert!(tokens.contains(&"开会".to_owned()), "{tokens:?}");
        assert!(tokens.contains(&"今天".to_owned()), "{tokens:?}");
        let rain = texts("明天下雨");
        assert!(!rain.contains(&"北京".to_owned()), "{rain:?}");
    }

    #[test]
    fn chinese_search_mode_sub_words_share_positions_with_the_word() {
        let tokens = analyzed("我在北京大学");
        let position_of = |word: &str| {
            tokens
                .iter()
                .find(|(text, _)| text == word)
                .map(|(_, position)| *position)
        };
        assert_eq!(position_of("北京大学"), Some(2), "{tokens:?}");
        assert_eq!(position_of("北京"), Some(2), "{tokens:?}");
        assert_eq!(position_of("大学"), Some(4), "{tokens:?}");
        let positions: Vec<usize> = tokens.iter().map(|(_, position)| *position).collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] <= pair[1]),
            "{tokens:?}"
        );
    }

    #[test]
    fn japanese_kana_become_bigrams_and_kanji_go_to_jieba() {
        let tokens = analyzed("東京で会議をします");
        let token_texts: Vec<&str> = tokens.iter().map(|(text, _)| text.as_str()).collect();
        assert!(token_texts.contains(&"で"), "{tokens:?}");
        for bigram in ["をし", "しま", "ます"] {
            assert!(
                token_texts.contains(&bigram),
                "{bigram} missing from {tokens:?}"
            );
        }
        assert!(
            token_texts
                .iter()
                .all(|text| !text.contains('で') || *text == "で")
        );
        assert_eq!(texts("します"), vec!["しま", "ます"]);
        assert_eq!(texts("カタカナ"), vec!["カタ", "タカ", "カナ"]);
    }

    #[test]
    fn korean_hangul_becomes_bigrams_per_word() {
        assert_eq!(
            analyzed("오늘 회의가 있습니다"),
            vec![
                ("오늘".to_owned(), 0),
                ("회의".to_owned(), 1),
                ("의가".to_owned(), 2),
                ("있습".to_owned(), 3),
                ("습니".to_owned(), 4),
                ("니다".to_owned(), 5),
            ]
        );
        assert_eq!(texts("회"), vec!["회"]);
    }

    #[test]
    fn english_is_split_lowercased_and_stemmed() {
        assert_eq!(
            analyzed("Meetings, MEETING: meeting's!"),
            vec![
                ("meet".to_owned(), 0),
                ("meet".to_owned(), 1),
                ("meet".to_owned(), 2),
                ("s".to_owned(), 3),
            ]
        );
        assert_eq!(texts("running-dogs 42"), vec!["run", "dog", "42"]);
    }

    #[test]
    fn mixed_scripts_keep_byte_offsets_and_increasing_positions() {
        let text = "Hello 世界 テスト 안녕";
        let mut analyzer = chorus_text_analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut tokens = Vec::new();
        while let Some(token) = stream.next() {
            tokens.push(token.clone());
        }
        let rendered: Vec<(&str, &str, usize)> = tokens
            .iter()
            .map(|token| {
                (
                    token.text.as_str(),
                    &text[token.offset_from..token.offset_to],
                    token.position,
                )
            })
            .collect();
        assert_eq!(
            rendered,
            vec![
                ("hello", "Hello", 0),
                ("世界", "世界", 1),
                ("テス", "テス", 3),
                ("スト", "スト", 4),
                ("안녕", "안녕", 5),
            ]
        );
    }

    #[test]
    fn separators_only_yield_nothing() {
        assert!(texts("  ,.!? ・ ").is_empty());
        assert!(texts("").is_empty());
    }
}
