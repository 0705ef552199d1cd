//! The synthetic corpus of the projection scenarios: users, conversations and messages, all drawn
//! from one seed, so two runs with the same options index the very same documents.
//!
//! - Users are `user0` … `user<N-1>`; `user0` is [`SEARCHER`], the user whose searches are
//!   measured. It is a member of exactly `searcher_conversations` conversations (direct and group
//!   in the corpus's proportion), and of no other: every other conversation is drawn from the
//!   remaining users.
//! - Groups (`g:team-<n>`) are created by their first member with a `conversation_created` event
//!   listing every member (the ingest node adds the creator, see ARCHITECTURE.md); those events
//!   come first in the stream. Direct conversations (`dm:<a>:<b>`) exist from their first message.
//! - Every conversation gets one message first (so each exists in history and the searcher's
//!   count holds whatever the sizes); the other messages go to conversations with a skewed
//!   activity (a few busy conversations, a long quiet tail) in a shuffled order. Each message is
//!   sent by a member of its conversation, in English (Zipf-like
//!   word choice, numbers, the odd emoji) or, for `cjk_share` of them, in Chinese (sometimes with
//!   English words), Japanese or Korean.
//! - Query words are drawn from the same vocabularies (content words only), so they occur in the
//!   corpus.
//!
//! The random source is a xorshift64* generator seeded through splitmix64: plenty for a
//! benchmark's synthetic data, and it keeps the corpus independent of any crate's version.

use std::collections::HashSet;

use chorus_core::ids::Conversation;
use chorus_schemas::{EventBody, IngressEvent};

/// The user whose searches are measured.
pub const SEARCHER: &str = "user0";

/// Milliseconds since the epoch of the first event (2025-01-01T00:00:00Z).
const FIRST_TIMESTAMP_MS: i64 = 1_735_689_600_000;
/// Group sizes range from this …
const SMALLEST_GROUP: usize = 3;
/// … to this.
const LARGEST_GROUP: usize = 50;

/// The corpus options of the scenarios that build one (`projection`, `search-shards`).
#[derive(clap::Args, Debug, Clone)]
pub struct CorpusArgs {
    /// Messages in the timeline.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Conversations (direct and group) the messages go to [default: 10,000, or a tenth of
    /// --messages when that is smaller, and more than --searcher-conversations].
    #[arg(long)]
    pub conversations: Option<u32>,
    /// Users [default: half the conversations, at least 200].
    #[arg(long)]
    pub users: Option<u32>,
    /// Share of the conversations that are groups.
    #[arg(long, default_value_t = 0.3)]
    pub group_share: f64,
    /// Share of the messages in Chinese, Japanese or Korean.
    #[arg(long, default_value_t = 0.3)]
    pub cjk_share: f64,
    /// Conversations of the user whose searches are measured.
    #[arg(long, default_value_t = 100)]
    pub searcher_conversations: u32,
    /// Seed of the corpus and the queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl CorpusArgs {
    fn conversations(&self) -> u32 {
        let scaled = u32::try_from(self.messages / 10).unwrap_or(u32::MAX);
        self.conversations.unwrap_or_else(|| {
            scaled
                .min(10_000)
                .max(self.searcher_conversations.saturating_mul(2))
        })
    }

    fn users(&self) -> u32 {
        self.users
            .unwrap_or_else(|| (self.conversations() / 2).max(200))
    }

    /// The corpus these options ask for, its events stamped with `origin_cluster`.
    pub fn spec(&self, origin_cluster: &str) -> CorpusSpec {
        CorpusSpec {
            messages: self.messages,
            conversations: self.conversations(),
            users: self.users(),
            group_share: self.group_share,
            cjk_share: self.cjk_share,
            searcher_conversations: self.searcher_conversations,
            seed: self.seed,
            origin_cluster: origin_cluster.to_owned(),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub messages: u64,
    pub conversations: u32,
    pub users: u32,
    /// Share of the conversations that are groups (the rest are direct conversations).
    pub group_share: f64,
    /// Share of the messages in Chinese, Japanese or Korean.
    pub cjk_share: f64,
    /// Conversations [`SEARCHER`] is a member of.
    pub searcher_conversations: u32,
    pub seed: u64,
    /// Stamped on every event as its origin (the config's `cluster`).
    pub origin_cluster: String,
}

/// One conversation of the corpus.
#[derive(Debug, Clone)]
pub struct PlannedConversation {
    pub id: String,
    /// Indexes into [`Corpus::users`]; for a group, the first is its creator.
    pub members: Vec<u32>,
    /// Whether it is a group (created by an event) rather than a direct conversation.
    pub group: bool,
}

/// The language a message is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Chinese,
    Japanese,
    Korean,
}

/// One generated event, with what the raw baseline and the report need to know about it.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    /// Index into [`Corpus::conversations`].
    pub conversation: u32,
    /// The language of a message; `None` for a group's creation.
    pub language: Option<Language>,
    /// The event as an ingest node would append it to `ingress`.
    pub event: IngressEvent,
}

/// Users and conversations, planned up front; [`Corpus::events`] then streams the events.
pub struct Corpus {
    pub spec: CorpusSpec,
    pub users: Vec<String>,
    pub conversations: Vec<PlannedConversation>,
    /// Conversations by activity rank: `activity_order[0]` is the busiest.
    activity_order: Vec<u32>,
}

impl Corpus {
    /// Plans users and conversations. Fails when the sizes cannot give [`SEARCHER`] exactly
    /// `searcher_conversations` conversations.
    pub fn plan(spec: &CorpusSpec) -> anyhow::Result<Corpus> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&spec.group_share) && (0.0..=1.0).contains(&spec.cjk_share),
            "--group-share and --cjk-share are fractions in 0..=1"
        );
        anyhow::ensure!(
            spec.searcher_conversations < spec.conversations,
            "--conversations must exceed --searcher-conversations"
        );
        anyhow::ensure!(
            spec.messages >= u64::from(spec.conversations),
            "--messages must be at least --conversations (each conversation gets a message)"
        );
        let total_groups = (f64::from(spec.conversations) * spec.group_share).round() as u32;
        let searcher_groups =
            (f64::from(spec.searcher_conversations) * spec.group_share).round() as u32;
        let searcher_direct = spec.searcher_conversations - searcher_groups;
        let other_groups = total_groups.saturating_sub(searcher_groups);
        let other_direct = spec.conversations - spec.searcher_conversations - other_groups;
        // the searcher's partners are distinct users; the other direct conversations are distinct
        // pairs among the other users, drawn with room to spare
        let others = u64::from(spec.users.saturating_sub(1));
        anyhow::ensure!(
            others > u64::from(searcher_direct) && others >= LARGEST_GROUP as u64,
            "--users must exceed {} for these sizes",
            u64::from(searcher_direct).max(LARGEST_GROUP as u64)
        );
        anyhow::ensure!(
            others * (others - 1) / 2 >= 2 * u64::from(other_direct),
            "--users is too small for {other_direct} distinct direct conversations"
        );
        let mut random = Random::new(spec.seed);
        let users: Vec<String> = (0..spec.users)
            .map(|index| format!("user{index}"))
            .collect();
        let mut conversations = Vec::with_capacity(spec.conversations as usize);
        let mut pairs: HashSet<(u32, u32)> = HashSet::new();
        let mut next_group = 0u32;
        let mut add_group = |members: Vec<u32>, conversations: &mut Vec<PlannedConversation>| {
            conversations.push(PlannedConversation {
                id: format!("g:team-{next_group}"),
                members,
                group: true,
            });
            next_group += 1;
        };
        // the searcher's conversations
        while pairs.len() < searcher_direct as usize {
            let partner = 1 + random.below(others) as u32;
            if pairs.insert((0, partner)) {
                conversations.push(direct(&users, 0, partner));
            }
        }
        for _ in 0..searcher_groups {
            let mut members = random.group_members(others, 1);
            let position = random.below(members.len() as u64 + 1) as usize;
            members.insert(position, 0);
            add_group(members, &mut conversations);
        }
        // everyone else's
        for _ in 0..other_groups {
            add_group(random.group_members(others, 0), &mut conversations);
        }
        while pairs.len() < (searcher_direct + other_direct) as usize {
            let first = 1 + random.below(others) as u32;
            let second = 1 + random.below(others) as u32;
            if first != second && pairs.insert((first.min(second), first.max(second))) {
                conversations.push(direct(&users, first, second));
            }
        }
        let mut activity_order: Vec<u32> = (0..spec.conversations).collect();
        for index in (1..activity_order.len()).rev() {
            let other = random.below(index as u64 + 1) as usize;
            activity_order.swap(index, other);
        }
        Ok(Corpus {
            spec: spec.clone(),
            users,
            conversations,
            activity_order,
        })
    }

    /// The conversations [`SEARCHER`] is a member of.
    pub fn searcher_conversations(&self) -> Vec<String> {
        self.conversations
            .iter()
            .filter(|conversation| conversation.members.contains(&0))
            .map(|conversation| conversation.id.clone())
            .collect()
    }

    /// How many events [`Corpus::events`] yields: one creation per group, then the messages.
    pub fn event_count(&self) -> u64 {
        let groups = self.conversations.iter().filter(|planned| planned.group);
        groups.count() as u64 + self.spec.messages
    }

    /// The events, in timeline order (the same for the same spec).
    pub fn events(&self) -> Events<'_> {
        Events {
            corpus: self,
            // a stream of its own, so planning and events do not shift each other
            random: Random::new(self.spec.seed ^ 0x5eed_0fe7_e175),
            next_conversation: 0,
            messages_left: self.spec.messages,
            emitted: 0,
            ts_ms: FIRST_TIMESTAMP_MS,
        }
    }

    /// `count` search queries made of content words of the corpus's languages (about half
    /// single English words, some pairs of them, a fifth Chinese words, the rest Japanese and
    /// Korean words).
    pub fn queries(&self, count: usize) -> Vec<String> {
        let mut random = Random::new(self.spec.seed ^ 0x0000_0c0f_fee5);
        (0..count)
            .map(|_| {
                let choice = random.unit();
                if choice < 0.50 {
                    random.pick(ENGLISH_CONTENT).to_owned()
                } else if choice < 0.65 {
                    format!(
                        "{} {}",
                        random.pick(ENGLISH_CONTENT),
                        random.pick(ENGLISH_CONTENT)
                    )
                } else if choice < 0.85 {
                    random.pick(CHINESE_WORDS).to_owned()
                } else if choice < 0.93 {
                    random.pick(JAPANESE_WORDS).to_owned()
                } else {
                    random.pick(KOREAN_WORDS).to_owned()
                }
            })
            .collect()
    }
}

fn direct(users: &[String], first: u32, second: u32) -> PlannedConversation {
    PlannedConversation {
        id: Conversation::direct(&users[first as usize], &users[second as usize]),
        members: vec![first, second],
        group: false,
    }
}

/// The event stream of a [`Corpus`].
pub struct Events<'corpus> {
    corpus: &'corpus Corpus,
    random: Random,
    /// The next conversation whose creation is due (groups are created first).
    next_conversation: usize,
    messages_left: u64,
    /// Events yielded so far (numbers client message ids).
    emitted: u64,
    /// The next event's time.
    ts_ms: i64,
}

impl Events<'_> {
    fn ingress(&mut self, conversation: u32, sender: u32, body: EventBody) -> IngressEvent {
        let corpus = self.corpus;
        self.emitted += 1;
        self.ts_ms += 1 + self.random.below(400) as i64;
        let mut entropy = [0u8; 10];
        entropy[..8].copy_from_slice(&self.random.next_u64().to_le_bytes());
        entropy[8..].copy_from_slice(&self.random.next_u64().to_le_bytes()[..2]);
        let event_id = uuid::Builder::from_unix_timestamp_millis(self.ts_ms as u64, &entropy)
            .into_uuid()
            .to_string();
        IngressEvent {
            event_id,
            conversation: corpus.conversations[conversation as usize].id.clone(),
            sender: corpus.users[sender as usize].clone(),
            client_msg_id: Some(format!("bench-{}", self.emitted)),
            ts_ms: self.ts_ms,
            origin_cluster: corpus.spec.origin_cluster.clone(),
            origin_node: Some("bench".into()),
            origin_session: Some(format!("session-{sender}")),
            trusted: false,
            body,
        }
    }

    fn message_text(&mut self, language: Language) -> String {
        let random = &mut self.random;
        match language {
            Language::English => english_sentence(random),
            Language::Chinese => {
                let words = 2 + random.skewed(14);
                let mut text = String::new();
                for index in 0..words {
                    if index > 0 && random.chance(0.15) {
                        text.push('，');
                    }
                    if random.chance(0.08) {
                        text.push(' ');
                        text.push_str(random.zipf(ENGLISH_CONTENT));
                        text.push(' ');
                    } else {
                        text.push_str(random.zipf(CHINESE_WORDS));
                    }
                }
                text.push_str(random.pick(&["。", "？", "！", "", "～"]));
                text
            }
            Language::Japanese => {
                let words = 2 + random.skewed(9);
                let mut text = String::new();
                for _ in 0..words {
                    text.push_str(random.zipf(JAPANESE_WORDS));
                    text.push_str(random.pick(JAPANESE_PARTICLES));
                }
                text.push_str(random.pick(&["。", "！", "？", ""]));
                text
            }
            Language::Korean => {
                let words = 2 + random.skewed(9);
                let chosen: Vec<&str> = (0..words).map(|_| random.zipf(KOREAN_WORDS)).collect();
                let mut text = chosen.join(" ");
                text.push_str(random.pick(&[".", "?", "!", ""]));
                text
            }
        }
    }

    fn language(&mut self) -> Language {
        let cjk_share = self.corpus.spec.cjk_share;
        let choice = self.random.unit();
        if choice >= cjk_share {
            return Language::English;
        }
        // of the CJK messages: 60% Chinese, 20% Japanese, 20% Korean
        let within = choice / cjk_share;
        if within < 0.6 {
            Language::Chinese
        } else if within < 0.8 {
            Language::Japanese
        } else {
            Language::Korean
        }
    }
}

impl Iterator for Events<'_> {
    type Item = GeneratedEvent;

    fn next(&mut self) -> Option<GeneratedEvent> {
        let corpus = self.corpus;
        while let Some(planned) = corpus.conversations.get(self.next_conversation) {
            let conversation = self.next_conversation as u32;
            self.next_conversation += 1;
            if !planned.group {
                continue;
            }
            let members: Vec<String> = planned
                .members
                .iter()
                .map(|member| corpus.users[*member as usize].clone())
                .collect();
            let title = format!("{} {conversation}", self.random.pick(GROUP_TOPICS));
            let body = EventBody::ConversationCreated {
                title: Some(title),
                members,
            };
            let event = self.ingress(conversation, planned.members[0], body);
            return Some(GeneratedEvent {
                conversation,
                language: None,
                event,
            });
        }
        if self.messages_left == 0 {
            return None;
        }
        let sent = self.corpus.spec.messages - self.messages_left;
        self.messages_left -= 1;
        let count = corpus.activity_order.len() as u64;
        let conversation = if sent < count {
            sent as u32 // every conversation's first message
        } else {
            let rank = (self.random.unit().powi(2) * count as f64) as usize;
            corpus.activity_order[rank.min(count as usize - 1)]
        };
        let members = &corpus.conversations[conversation as usize].members;
        let sender = members[self.random.below(members.len() as u64) as usize];
        let language = self.language();
        let text = self.message_text(language);
        let event = self.ingress(conversation, sender, EventBody::message(text));
        Some(GeneratedEvent {
            conversation,
            language: Some(language),
            event,
        })
    }
}

/// An English chat line: mostly short, sometimes long, words Zipf-distributed (function words
/// most often), with the odd number, time or emoji.
fn english_sentence(random: &mut Random) -> String {
    let words = if random.chance(0.05) {
        30 + random.below(50) as usize
    } else {
        1 + random.skewed(24)
    };
    let mut text = String::new();
    for index in 0..words {
        if index > 0 {
            text.push(' ');
        }
        let choice = random.unit();
        if choice < 0.35 {
            text.push_str(random.zipf(ENGLISH_FUNCTION));
        } else if choice < 0.97 {
            let word = random.zipf(ENGLISH_CONTENT);
            if index == 0 {
                let mut characters = word.chars();
                if let Some(first) = characters.next() {
                    text.extend(first.to_uppercase());
                    text.push_str(characters.as_str());
                }
            } else {
                text.push_str(word);
            }
        } else if choice < 0.99 {
            text.push_str(&format!("{}:{:02}", random.below(24), random.below(60)));
        } else {
            text.push_str(random.pick(&["🙂", "👍", "🎉", "😂", "🙏"]));
        }
    }
    text.push_str(random.pick(&[".", "?", "!", "", "", "..."]));
    text
}

/// xorshift64* seeded through splitmix64.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        // splitmix64, so that nearby seeds give unrelated streams (and the state is never zero)
        let mut mixed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^= mixed >> 31;
        Random(mixed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..bound` (`bound > 0`).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// In `0..=most`, small values most likely.
    fn skewed(&mut self, most: usize) -> usize {
        (self.unit().powi(2) * (most + 1) as f64) as usize
    }

    fn pick<'item>(&mut self, items: &[&'item str]) -> &'item str {
        items[self.below(items.len() as u64) as usize]
    }

    /// An item, the first ones far more often than the last (roughly Zipf's law).
    fn zipf<'item>(&mut self, items: &[&'item str]) -> &'item str {
        let index = (self.unit().powi(3) * items.len() as f64) as usize;
        items[index.min(items.len() - 1)]
    }

    /// Distinct members of a new group drawn from users `1..=others`, leaving `room` places for
    /// members added by the caller.
    fn group_members(&mut self, others: u64, room: usize) -> Vec<u32> {
        let size = SMALLEST_GROUP + self.skewed(LARGEST_GROUP - SMALLEST_GROUP);
        let wanted = size.saturating_sub(room).max(1);
        let mut members: Vec<u32> = Vec::with_capacity(size);
        while members.len() < wanted {
            let member = 1 + self.below(others) as u32;
            if !members.contains(&member) {
                members.push(member);
            }
        }
        members
    }
}

/// Frequent English words that carry no meaning worth searching for.
#[rustfmt::skip]
const ENGLISH_FUNCTION: &[&str] = &[
    "the", "i", "to", "a", "you", "and", "it", "is", "we", "that", "of", "in", "for", "on", "be",
    "so", "can", "this", "are", "do", "with", "at", "just", "have", "will", "me", "my", "not",
    "but", "if", "what", "our", "was", "they", "all", "or", "there", "from", "your", "about",
];

/// English words worth searching for, the most frequent first.
#[rustfmt::skip]
const ENGLISH_CONTENT: &[&str] = &[
    "ok", "thanks", "yes", "meeting", "today", "tomorrow", "please", "time", "check", "good",
    "need", "know", "think", "now", "call", "later", "send", "update", "team", "work", "lunch",
    "review", "project", "deploy", "release", "fix", "bug", "issue", "customer", "report", "file",
    "link", "doc", "design", "build", "test", "server", "data", "question", "morning", "afternoon",
    "week", "weekend", "friday", "monday", "coffee", "dinner", "office", "home", "travel",
    "flight", "hotel", "budget", "contract", "invoice", "payment", "deadline", "schedule",
    "agenda", "slides", "demo", "launch", "feedback", "draft", "approve", "merge", "branch",
    "ticket", "sprint", "standup", "roadmap", "metrics", "dashboard", "latency", "database",
    "backup", "outage", "incident", "alert", "pager", "rollback", "config", "cluster", "kafka",
    "search", "index", "query", "cache", "memory", "disk", "network", "password", "account",
    "login", "invite", "calendar", "holiday", "birthday", "party", "movie", "music", "football",
    "weather", "rain", "train", "bus", "airport", "taxi", "restaurant", "pizza", "salad",
    "meetings", "reviewed", "deployed", "tested", "shipping", "shipped", "planning", "hiring",
    "interview", "candidate", "offer", "salary", "promotion", "quarter", "revenue", "forecast",
    "partner", "vendor", "supplier", "warehouse", "shipment", "delivery", "order", "refund",
    "support", "escalation", "priority", "blocker", "milestone", "prototype", "benchmark",
    "throughput", "migration", "upgrade", "security", "audit", "compliance", "license",
    "translation", "localization", "chinese", "japanese", "korean", "beijing", "shanghai", "tokyo",
    "seoul", "london", "berlin", "paris", "singapore", "conference", "workshop", "keynote",
    "newsletter", "announcement", "photos", "video", "recording", "transcript",
];

/// Chinese words (jieba segments them back out of unspaced text), the most frequent first.
#[rustfmt::skip]
const CHINESE_WORDS: &[&str] = &[
    "我们", "今天", "明天", "好的", "可以", "一下", "没有", "知道", "需要", "已经", "问题", "时间", "开会", "项目", "谢谢", "大家",
    "现在", "下午", "早上", "晚上", "工作", "客户", "报告", "数据", "服务器", "部署", "测试", "代码", "文档", "会议室", "讨论",
    "完成", "发布", "版本", "手机", "电脑", "朋友", "同事", "老板", "天气", "下雨", "咖啡", "午饭", "晚饭", "周末", "电影", "地铁",
    "飞机", "火车", "酒店", "预订", "价格", "合同", "签字", "付款", "发票", "北京", "上海", "深圳", "广州", "杭州", "北京大学",
    "清华大学", "中国", "公司", "经理", "市场", "销售", "产品", "设计", "用户", "体验", "需求", "计划", "安排", "确认", "检查",
    "修改", "提交", "审核", "上线", "回滚", "故障", "告警", "监控", "性能", "数据库", "搜索", "索引", "网络", "安全", "密码",
    "账号", "登录", "生日", "聚会", "旅游", "春节", "中秋节", "火锅", "奶茶", "快递", "外卖", "辛苦了", "麻烦", "请问", "收到",
];

/// Japanese words and phrases (kanji, hiragana and katakana), the most frequent first.
#[rustfmt::skip]
const JAPANESE_WORDS: &[&str] = &[
    "今日", "明日", "会議", "確認", "資料", "お願いします", "ありがとうございます", "了解", "すみません", "お疲れ様です", "東京", "大阪",
    "プロジェクト", "テスト", "メール", "ミーティング", "サーバー", "リリース", "デザイン", "スケジュール", "電車", "遅れ", "予定", "打ち合わせ",
    "お客様", "見積もり", "契約", "ランチ", "コーヒー", "週末", "天気", "写真", "共有", "修正", "対応", "報告", "時間", "場所", "連絡",
    "よろしく",
];

/// What joins Japanese words (particles and endings).
#[rustfmt::skip]
const JAPANESE_PARTICLES: &[&str] = &[
    "は", "の", "を", "に", "で", "が", "も", "です", "します", "",
];

/// Korean words and phrases, the most frequent first.
#[rustfmt::skip]
const KOREAN_WORDS: &[&str] = &[
    "네", "오늘", "내일", "회의", "확인", "감사합니다", "안녕하세요", "프로젝트", "자료", "부탁드립니다", "서울", "부산", "점심", "커피",
    "시간", "보내드릴게요", "좋아요", "알겠습니다", "일정", "테스트", "서버", "배포", "고객", "계약", "주말", "날씨", "사진", "공유",
    "수정", "보고서", "회의실", "저녁", "출장", "비행기", "호텔", "예약", "생일", "파티", "영화", "수고하셨습니다",
];

/// Words for group titles.
#[rustfmt::skip]
const GROUP_TOPICS: &[&str] = &[
    "Project", "Team", "Ops", "Family", "Friends", "Launch", "项目组", "周末", "チーム", "모임",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn small_spec(seed: u64) -> CorpusSpec {
        CorpusSpec {
            messages: 3_000,
            conversations: 400,
            users: 300,
            group_share: 0.3,
            cjk_share: 0.3,
            searcher_conversations: 100,
            seed,
            origin_cluster: "local".into(),
        }
    }

    fn texts(corpus: &Corpus) -> Vec<(String, String, String)> {
        corpus
            .events()
            .map(|generated| {
                let event = generated.event;
                (
                    event.conversation,
                    event.sender,
                    format!("{:?}", event.body),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        let first = Corpus::plan(&small_spec(7)).unwrap();
        let second = Corpus::plan(&small_spec(7)).unwrap();
        let other = Corpus::plan(&small_spec(8)).unwrap();
        fn ids(corpus: &Corpus) -> Vec<String> {
            corpus
                .events()
                .map(|generated| generated.event.event_id)
                .collect()
        }
        assert_eq!(ids(&first), ids(&second));
        assert_eq!(texts(&first), texts(&second));
        assert_ne!(texts(&first), texts(&other));
        assert_eq!(first.queries(50), second.queries(50));
        assert_eq!(first.events().count() as u64, first.event_count());
    }

    #[test]
    fn the_searcher_is_in_exactly_the_asked_conversations() {
        let corpus = Corpus::plan(&small_spec(3)).unwrap();
        let planned: HashSet<String> = corpus.searcher_conversations().into_iter().collect();
        assert_eq!(planned.len(), 100);
        // as the history projection will see it: direct conversations by id, groups by creation
        let mut member_of = HashSet::new();
        let mut ids = HashSet::new();
        for generated in corpus.events() {
            let event = generated.event;
            ids.insert(event.conversation.clone());
            match &event.body {
                EventBody::ConversationCreated { members, .. } => {
                    if members.iter().any(|member| member == SEARCHER) {
                        member_of.insert(event.conversation.clone());
                    }
                }
                _ => match Conversation::parse(&event.conversation).unwrap() {
                    Conversation::Direct { first, second } => {
                        if first == SEARCHER || second == SEARCHER {
                            member_of.insert(event.conversation.clone());
                        }
                    }
                    Conversation::Group { .. } => {}
                },
            }
        }
        assert_eq!(member_of, planned);
        let searcher_direct = planned.iter().filter(|id| id.starts_with("dm:")).count();
        assert_eq!(searcher_direct, 70);
        assert_eq!(ids.len(), 400);
    }

    #[test]
    fn every_event_is_valid_and_from_a_member() {
        let corpus = Corpus::plan(&small_spec(11)).unwrap();
        let limits = chorus_core::config::ChorusConfig::default().limits;
        for generated in corpus.events() {
            chorus_core::validate::validate_ingress(&generated.event, &limits).unwrap();
            let planned = &corpus.conversations[generated.conversation as usize];
            let sender = &generated.event.sender;
            assert!(
                planned
                    .members
                    .iter()
                    .any(|member| &corpus.users[*member as usize] == sender)
            );
        }
    }

    #[test]
    fn the_router_sequences_every_event() {
        let corpus = Corpus::plan(&small_spec(5)).unwrap();
        let mut state = chorus_router::state::SequencerState::new(1_000_000);
        for (offset, generated) in corpus.events().enumerate() {
            let decision = state.decide(generated.event, offset as u64);
            assert!(
                matches!(decision, chorus_router::state::Decision::Sequence(_)),
                "{decision:?}"
            );
        }
    }

    #[test]
    fn sizes_that_cannot_work_are_refused() {
        let mut spec = small_spec(1);
        spec.conversations = 100;
        assert!(Corpus::plan(&spec).is_err());
        let mut spec = small_spec(1);
        spec.users = 20;
        assert!(Corpus::plan(&spec).is_err());
    }
}
