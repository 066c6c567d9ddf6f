//! LeanCloud `conv/query` conditions, evaluated over `_Conversation`-style rows.
//!
//! `conv/query {where:{data}, sort, skip, limit, flag}` carries a LeanStorage (MongoDB-like)
//! condition as JSON text. [`Query::parse`] checks and compiles it once; [`Query::matches`]
//! tests one row and [`Query::apply`] filters, sorts, skips and limits a batch. Pure: no I/O,
//! no registry, no clock. Where a full scan would be wasteful, [`Query::object_ids`] and
//! [`Query::required_members`] say which rows could possibly match.
//!
//! Semantics (LeanStorage's, which are MongoDB's):
//!
//! * A `where` object is a conjunction. A key is a column, or a dotted path into nested objects
//!   (`attr.x`; a numeric segment indexes an array: `m.0`). `$and` / `$or` take non-empty arrays
//!   of `where` objects.
//! * A plain value means equality. Numbers compare by value (`1 == 1.0`), objects and arrays
//!   structurally. `null` matches a missing column. An array column equals a value when the
//!   whole array equals it or one of its elements does (`{"m": "bob"}` finds bob's
//!   conversations).
//! * An object whose keys start with `$` holds operators, all of which must hold: `$ne`, `$lt`,
//!   `$lte`, `$gt`, `$gte`, `$in`, `$nin`, `$all`, `$size`, `$exists`, `$regex` (with
//!   `$options`). An operator the server does not know is an error, never silently false.
//! * Dates are `{"__type":"Date","iso":"…"}`. When one side of a comparison is a Date, a string
//!   on the other side is read as an ISO-8601 time (rows written by JSON-encoding a JS `Date`
//!   hold strings), so `createdAt`/`updatedAt`/`lm` may be either. Otherwise numbers compare
//!   with numbers and strings with strings (by code point); other pairings never match a range
//!   operator. On an array column a range operator or `$regex` holds if any element satisfies it.
//! * `$regex` supports a linear-time subset, see [`MAX_REGEX_BYTES`] and
//!   [`QueryError::UnsupportedRegex`].
//! * `sort` is `"a,-b"`: numbers numerically, strings by code point, Dates by time (in the
//!   [`DATE_COLUMNS`] ISO strings too), missing or `null` first when ascending. Across types the
//!   MongoDB order: missing/null < numbers < strings < objects < arrays < booleans < dates. Ties
//!   keep the input order. Without `sort` rows keep the order given.

use std::cmp::Ordering;
use std::str::Chars;

use serde_json::{Map, Number, Value};

/// Rows answered when the client sends no `limit` (LeanStorage's and the SDKs' default).
pub const DEFAULT_LIMIT: usize = 10;

/// Most rows one query answers; larger limits are lowered to this, as LeanStorage does.
pub const MAX_LIMIT: usize = 1000;

/// Longest `$regex` pattern accepted, in bytes of UTF-8. The SDK builds patterns from user
/// substrings (`contains`, `startsWith`, `endsWith`) or passes a `RegExp`'s source; 256 bytes is
/// plenty for either and bounds the compiled program at about 770 instructions, so matching a
/// string costs at most about 1,500 steps per character.
pub const MAX_REGEX_BYTES: usize = 256;

/// Row columns whose ISO-8601 string values sort as times (they may also hold Date objects).
pub const DATE_COLUMNS: [&str; 3] = ["createdAt", "updatedAt", "lm"];

/// `flag` bit 0, *compact*: answer rows without their member list `m`.
pub const FLAG_COMPACT: i32 = 1;

/// `flag` bit 1, *withLastMessagesRefreshed*: the client wants `msg_*` refreshed in every row.
pub const FLAG_REFRESH_LAST_MESSAGE: i32 = 2;

/// Why a query was refused. Every variant is the client's doing; none is a server fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `where` is not JSON (or nests deeper than serde_json's 128 levels).
    #[error("where is not JSON: {0}")]
    BadJson(String),
    /// `where` is JSON but not an object.
    #[error("where must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A `$` key that is not a supported operator (`$nor`, `$elemMatch`, `$eq`, …).
    #[error("unknown operator {0}")]
    UnknownOperator(String),
    /// A supported operator with an operand of the wrong shape.
    #[error("bad operand for {op}: {why}")]
    BadOperand {
        /// The operator.
        op: String,
        /// What it expects.
        why: String,
    },
    /// A condition object mixing operators with plain keys (`{"$gt": 1, "x": 2}`).
    #[error("the condition on {field} mixes operators with the plain key {key}")]
    MixedCondition {
        /// The column the condition is on.
        field: String,
        /// The first key that is not an operator.
        key: String,
    },
    /// A `$regex` longer than [`MAX_REGEX_BYTES`].
    #[error("regex of {len} bytes is longer than the {MAX_REGEX_BYTES} allowed")]
    RegexTooLong {
        /// The pattern's length in bytes.
        len: usize,
    },
    /// A valid regex using something outside the supported subset: groups, lookarounds,
    /// alternation, counted repetition `{n,m}`, backreferences, `\b` and other letter escapes
    /// than `\d \D \w \W \s \S \n \r \t \f \Q \E`, possessive quantifiers, POSIX classes.
    #[error("regex {pattern:?} uses {construct}, which is not supported")]
    UnsupportedRegex {
        /// The whole pattern.
        pattern: String,
        /// The construct refused.
        construct: String,
    },
    /// A malformed regex: nothing to repeat, trailing backslash, unterminated class, bad range.
    #[error("invalid regex {pattern:?}: {why}")]
    InvalidRegex {
        /// The whole pattern.
        pattern: String,
        /// What is wrong with it.
        why: String,
    },
    /// The query needs more work than one query may do (`leancloud_query_steps_max`, see
    /// [`Meter`]).
    #[error(
        "the query needs more than {max} steps of work; narrow it (pin objectId or m, or match \
         fewer or shorter columns)"
    )]
    TooMuchWork {
        /// The steps one query may take.
        max: u64,
    },
    /// A `sort` entry that names no column (`-`, `--a`).
    #[error("bad sort key {0:?}")]
    BadSort(String),
    /// A negative `skip`.
    #[error("skip must not be negative, got {0}")]
    NegativeSkip(i32),
    /// A negative `limit`.
    #[error("limit must not be negative, got {0}")]
    NegativeLimit(i32),
}

/// A parsed `conv/query`: condition, sort keys, skip, limit and flag.
#[derive(Clone, Debug)]
pub struct Query {
    cond: Cond,
    sort: Vec<SortKey>,
    skip: usize,
    limit: usize,
    flag: i32,
}

impl Query {
    /// Parses `where` JSON text, `sort` (`"a,-b"`), `skip` and `limit`.
    ///
    /// No `where`, or blank text, matches every row. No `skip` is 0; no `limit` is
    /// [`DEFAULT_LIMIT`], and limits above [`MAX_LIMIT`] are lowered to it (0 asks for nothing).
    /// Empty `sort` entries (`"a,,b"`, a trailing comma) are ignored.
    pub fn parse(
        where_json: Option<&str>,
        sort: Option<&str>,
        skip: Option<i32>,
        limit: Option<i32>,
    ) -> Result<Query, QueryError> {
        let cond = match where_json.map(str::trim) {
            None | Some("") => Cond::And(Vec::new()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(o)) => parse_conjunction(&o)?,
                Ok(other) => return Err(QueryError::NotAnObject(json_type(&other))),
                Err(e) => return Err(QueryError::BadJson(e.to_string())),
            },
        };
        let sort = parse_sort(sort.unwrap_or(""))?;
        let skip = match skip {
            None => 0,
            Some(n) => usize::try_from(n).map_err(|_| QueryError::NegativeSkip(n))?,
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(n) => usize::try_from(n)
                .map_err(|_| QueryError::NegativeLimit(n))?
                .min(MAX_LIMIT),
        };
        Ok(Query {
            cond,
            sort,
            skip,
            limit,
            flag: 0,
        })
    }

    /// The same query with the request's `flag` bits ([`FLAG_COMPACT`],
    /// [`FLAG_REFRESH_LAST_MESSAGE`]); unknown bits are kept but mean nothing here.
    #[must_use]
    pub fn with_flag(mut self, flag: Option<i32>) -> Query {
        self.flag = flag.unwrap_or(0);
        self
    }

    /// Whether the rows answered leave out `m` ([`FLAG_COMPACT`]).
    pub fn compact(&self) -> bool {
        self.flag & FLAG_COMPACT != 0
    }

    /// Whether the client asked for refreshed last messages ([`FLAG_REFRESH_LAST_MESSAGE`]).
    pub fn refresh_last_message(&self) -> bool {
        self.flag & FLAG_REFRESH_LAST_MESSAGE != 0
    }

    /// Rows skipped after sorting.
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// Most rows answered, at most [`MAX_LIMIT`].
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `row` satisfies the condition.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.cond.eval(row, &mut Meter::unlimited())
    }

    /// Keeps the rows that match, sorts them (stably), skips and limits, and drops `m` from
    /// each row answered if the query is [compact](Query::compact).
    ///
    /// Rows must carry `m` even for a compact query, or conditions on members cannot hold.
    pub fn apply(&self, rows: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
        self.apply_within(rows, &mut Meter::unlimited())
            .unwrap_or_default()
    }

    /// [`Query::apply`] within a budget of work: refused with [`QueryError::TooMuchWork`] as
    /// soon as `meter` has spent its steps (a few more than that at most: one row's test of
    /// one value, or one regex step per instruction of one character). `meter` says afterwards
    /// how much was spent, refused or not.
    pub fn apply_within(
        &self,
        rows: Vec<Map<String, Value>>,
        meter: &mut Meter,
    ) -> Result<Vec<Map<String, Value>>, QueryError> {
        self.apply_with_members(rows.into_iter().map(|r| (r, None)).collect(), meter)
    }

    /// [`Query::apply_within`] over rows that may come with their whole member list: where
    /// one does, conditions on `m` (and `m.N`) are matched against it rather than against the
    /// row's `m` column, which may hold only the first members. Sorting by `m` and the rows
    /// answered use the column.
    pub fn apply_with_members(
        &self,
        rows: Vec<RowWithMembers<'_>>,
        meter: &mut Meter,
    ) -> Result<Vec<Map<String, Value>>, QueryError> {
        let too_much = |m: &Meter| QueryError::TooMuchWork { max: m.max };
        let mut matching: Vec<Map<String, Value>> = Vec::new();
        for (row, members) in rows {
            if self.cond.eval_with(&row, members, meter) {
                matching.push(row);
            }
            if meter.over() {
                return Err(too_much(meter));
            }
        }
        let mut out: Vec<Map<String, Value>> = if self.sort.is_empty() {
            matching
                .into_iter()
                .skip(self.skip)
                .take(self.limit)
                .collect()
        } else {
            let order: Vec<usize> = {
                // Each key is written out once (objects and arrays as JSON text) and looked at
                // about log2(rows) times by the sort.
                let rounds = u64::from(usize::BITS - matching.len().leading_zeros()).max(1);
                let mut keys: Vec<Vec<SortValue<'_>>> = Vec::with_capacity(matching.len());
                for r in &matching {
                    let row_keys: Vec<SortValue<'_>> =
                        self.sort.iter().map(|k| k.value(r)).collect();
                    let bytes: usize = row_keys.iter().map(SortValue::bytes).sum();
                    let (keys_n, bytes) = (row_keys.len() as u64, bytes as u64);
                    meter.spend(bytes / 8 + rounds * (keys_n + bytes / 64));
                    if meter.over() {
                        return Err(too_much(meter));
                    }
                    keys.push(row_keys);
                }
                let mut order: Vec<usize> = (0..matching.len()).collect();
                order.sort_by(|&a, &b| compare_sort_keys(&self.sort, &keys[a], &keys[b]));
                order.into_iter().skip(self.skip).take(self.limit).collect()
            };
            let mut slots: Vec<Option<Map<String, Value>>> =
                matching.into_iter().map(Some).collect();
            order.into_iter().filter_map(|i| slots[i].take()).collect()
        };
        if self.compact() {
            for row in &mut out {
                row.remove("m");
            }
        }
        Ok(out)
    }

    /// The ids a matching row's `objectId` must be among, when the condition says so: equality
    /// with a string or `$in` on `objectId` at the top level, inside `$and` (constraints
    /// intersect) or in every branch of an `$or` (branches unite). Lets the caller fetch those
    /// rows instead of scanning; it must still [match](Query::matches) them, since the other
    /// conditions are not applied. Non-string `$in` entries are dropped (ids are strings).
    /// `Some(vec![])` means nothing can match. Ids are deduplicated, in first-seen order.
    pub fn object_ids(&self) -> Option<Vec<String>> {
        pinned_ids(&self.cond)
    }

    /// Whether every matching row's `column` must be `true` (the SDK's `getChatRoomQuery()`
    /// asks for `tr`, `getServiceConversationQuery()` for `sys`): equality with `true` at the
    /// top level, inside `$and`, or in every branch of an `$or`.
    pub fn requires_true(&self, column: &str) -> bool {
        requires_true(&self.cond, column)
    }

    /// Whether the condition or the sort looks at any of the columns `names` (a dotted key
    /// looks at its first part).
    pub fn looks_at(&self, names: &[&str]) -> bool {
        fn cond(c: &Cond, names: &[&str]) -> bool {
            match c {
                Cond::And(all) | Cond::Or(all) => all.iter().any(|c| cond(c, names)),
                Cond::Field { path, .. } => {
                    path.first().is_some_and(|p| names.contains(&p.as_str()))
                }
            }
        }
        cond(&self.cond, names) || self.sorts_by(names)
    }

    /// Whether the sort looks at any of the columns `names`.
    pub fn sorts_by(&self, names: &[&str]) -> bool {
        self.sort
            .iter()
            .any(|k| k.path.first().is_some_and(|p| names.contains(&p.as_str())))
    }

    /// Member ids every matching row's `m` must contain: `m` equal to a string (or to an array
    /// of strings), `$all`, or `$in` with a single string, at the top level or inside `$and`
    /// (requirements add up) or in every branch of an `$or` (only the shared ones count).
    /// Assumes `m` is an array of strings, as in every `_Conversation` row. `None` when the
    /// condition requires no member. Deduplicated, in first-seen order.
    pub fn required_members(&self) -> Option<Vec<String>> {
        let members = required_members(&self.cond);
        (!members.is_empty()).then_some(members)
    }
}

/// A row, and its whole member list when its `m` column may hold only the first members.
pub type RowWithMembers<'m> = (Map<String, Value>, Option<&'m dyn MemberSet>);

/// A row's whole member list, sorted by id, for matching conditions on `m` when the row's
/// `m` column holds only the first members.
pub trait MemberSet {
    /// How many members there are.
    fn count(&self) -> usize;
    /// Whether `id` is one of them.
    fn contains(&self, id: &str) -> bool;
    /// The member at `index` in id order.
    fn get(&self, index: usize) -> Option<&str>;
}

impl<T: AsRef<str>> MemberSet for std::sync::Arc<[T]> {
    fn count(&self) -> usize {
        self.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.binary_search_by(|m| m.as_ref().cmp(id)).is_ok()
    }

    fn get(&self, index: usize) -> Option<&str> {
        <[T]>::get(self, index).map(AsRef::as_ref)
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions

/// The work a query does, in steps, and how many it may take: one `$regex` instruction visited
/// per character of a string (a substring search costs about two steps a character, the worst
/// pattern about 1,500), one value compared (each element of an array column, each entry of
/// an `$in` list, each node of an object compared), one more per 64 bytes of two strings
/// compared, and per row sorted one per 8 bytes of its keys written out plus its keys' count
/// (and one per 64 bytes of key) times log2 of the rows sorted. In release builds a million steps are a few milliseconds of CPU.
#[derive(Debug, Clone)]
pub struct Meter {
    spent: u64,
    max: u64,
}

impl Meter {
    /// A budget of `max` steps.
    pub fn new(max: u64) -> Meter {
        Meter { spent: 0, max }
    }

    /// No budget at all (tests, and callers that bound the work otherwise).
    pub fn unlimited() -> Meter {
        Meter::new(u64::MAX)
    }

    /// Steps spent so far.
    pub fn spent(&self) -> u64 {
        self.spent
    }

    fn spend(&mut self, steps: u64) {
        self.spent = self.spent.saturating_add(steps);
    }

    fn over(&self) -> bool {
        self.spent > self.max
    }

    fn left(&self) -> u64 {
        self.max - self.spent.min(self.max)
    }
}

/// Steps for comparing two strings of these lengths (memcmp reads the shorter one at most).
fn string_steps(a: &str, b: &str) -> u64 {
    1 + (a.len().min(b.len()) / 64) as u64
}

/// A compiled condition.
#[derive(Clone, Debug)]
enum Cond {
    /// Every one holds (a `where` object, or `$and`). Empty: always true.
    And(Vec<Cond>),
    /// At least one holds (`$or`, never empty).
    Or(Vec<Cond>),
    /// Tests on one column or path, all of which must hold.
    Field {
        key: String,
        path: Vec<String>,
        tests: Vec<Test>,
    },
}

#[derive(Clone, Debug)]
enum Test {
    Eq(Value),
    Ne(Value),
    Cmp(Cmp, Operand),
    In(Vec<Value>),
    Nin(Vec<Value>),
    All(Vec<Value>),
    Size(usize),
    Exists(bool),
    Regex(Regex),
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Cmp {
    fn holds(self, ord: Option<Ordering>) -> bool {
        match (self, ord) {
            (_, None) => false,
            (Cmp::Lt, Some(o)) => o == Ordering::Less,
            (Cmp::Lte, Some(o)) => o != Ordering::Greater,
            (Cmp::Gt, Some(o)) => o == Ordering::Greater,
            (Cmp::Gte, Some(o)) => o != Ordering::Less,
        }
    }
}

/// The right-hand side of a range operator.
#[derive(Clone, Debug)]
enum Operand {
    Num(Number),
    /// The string, and its time if it reads as ISO-8601 (compared against Date columns).
    Str(String, Option<Instant>),
    Date(Instant),
}

/// Nanoseconds since 1970-01-01T00:00:00Z.
type Instant = i128;

impl Cond {
    /// Whether `row` satisfies the condition; once `m` is over its budget the answer means
    /// nothing (the caller refuses the query).
    fn eval(&self, row: &Map<String, Value>, m: &mut Meter) -> bool {
        self.eval_with(row, None, m)
    }

    /// [`Cond::eval`], matching conditions on `m` against `members` when given.
    fn eval_with(
        &self,
        row: &Map<String, Value>,
        members: Option<&dyn MemberSet>,
        m: &mut Meter,
    ) -> bool {
        match self {
            Cond::And(all) => all
                .iter()
                .all(|c| !m.over() && c.eval_with(row, members, m)),
            Cond::Or(any) => any
                .iter()
                .any(|c| !m.over() && c.eval_with(row, members, m)),
            Cond::Field { path, tests, .. } => {
                m.spend(path.len() as u64);
                match (members, path.as_slice()) {
                    (Some(set), [first]) if first == "m" => {
                        tests.iter().all(|t| !m.over() && t.eval_members(set, m))
                    }
                    (Some(set), [first, rest @ ..]) if first == "m" => {
                        let value = match rest {
                            [index] if is_index(index) => index
                                .parse::<usize>()
                                .ok()
                                .and_then(|i| set.get(i))
                                .map(|id| Value::String(id.to_owned())),
                            _ => None,
                        };
                        tests.iter().all(|t| !m.over() && t.eval(value.as_ref(), m))
                    }
                    _ => {
                        let value = lookup(row, path);
                        tests.iter().all(|t| !m.over() && t.eval(value, m))
                    }
                }
            }
        }
    }
}

/// Equality as a `where` means it, of an `m` column holding `set`: a string is a member, an
/// array is the whole list in order; anything else is compared with each member.
fn member_eq(set: &dyn MemberSet, q: &Value, m: &mut Meter) -> bool {
    if m.over() {
        return false;
    }
    m.spend(1);
    match q {
        Value::String(id) => {
            m.spend(string_steps(id, id));
            set.contains(id)
        }
        Value::Array(items) => {
            items.len() == set.count()
                && items.iter().enumerate().all(|(i, q)| {
                    m.spend(1);
                    !m.over() && q.as_str().is_some() && q.as_str() == set.get(i)
                })
        }
        _ => (0..set.count()).any(|i| {
            !m.over()
                && set
                    .get(i)
                    .is_some_and(|id| values_equal(&Value::String(id.to_owned()), q, m))
        }),
    }
}

impl Test {
    fn eval(&self, value: Option<&Value>, m: &mut Meter) -> bool {
        m.spend(1);
        match self {
            Test::Eq(q) => field_eq(value, q, m),
            Test::Ne(q) => !field_eq(value, q, m),
            Test::Cmp(op, rhs) => match value {
                None => false,
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|e| !m.over() && op.holds(compare(e, rhs, m))),
                Some(v) => op.holds(compare(v, rhs, m)),
            },
            Test::In(list) => list.iter().any(|q| !m.over() && field_eq(value, q, m)),
            Test::Nin(list) => !list.iter().any(|q| !m.over() && field_eq(value, q, m)),
            Test::All(list) => {
                !list.is_empty() && list.iter().all(|q| !m.over() && field_eq(value, q, m))
            }
            Test::Size(n) => matches!(value, Some(Value::Array(a)) if a.len() == *n),
            Test::Exists(want) => value.is_some() == *want,
            Test::Regex(re) => match value {
                Some(Value::String(s)) => re.matches_within(s, m),
                Some(Value::Array(items)) => items.iter().any(|e| {
                    m.spend(1);
                    !m.over() && e.as_str().is_some_and(|s| re.matches_within(s, m))
                }),
                _ => false,
            },
        }
    }
}

impl Test {
    /// [`Test::eval`] of an `m` column holding `set`.
    fn eval_members(&self, set: &dyn MemberSet, m: &mut Meter) -> bool {
        m.spend(1);
        match self {
            Test::Eq(q) => member_eq(set, q, m),
            Test::Ne(q) => !member_eq(set, q, m),
            Test::Cmp(op, rhs) => (0..set.count()).any(|i| {
                m.spend(1);
                !m.over()
                    && set
                        .get(i)
                        .is_some_and(|id| op.holds(compare_str(id, rhs, m)))
            }),
            Test::In(list) => list.iter().any(|q| !m.over() && member_eq(set, q, m)),
            Test::Nin(list) => !list.iter().any(|q| !m.over() && member_eq(set, q, m)),
            Test::All(list) => {
                !list.is_empty() && list.iter().all(|q| !m.over() && member_eq(set, q, m))
            }
            Test::Size(n) => set.count() == *n,
            Test::Exists(want) => *want,
            Test::Regex(re) => (0..set.count()).any(|i| {
                m.spend(1);
                !m.over() && set.get(i).is_some_and(|id| re.matches_within(id, m))
            }),
        }
    }
}

/// The value at a dotted path, if there is one.
fn lookup<'r>(row: &'r Map<String, Value>, path: &[String]) -> Option<&'r Value> {
    let (first, rest) = path.split_first()?;
    let mut value = row.get(first)?;
    for segment in rest {
        value = match value {
            Value::Object(o) => o.get(segment)?,
            Value::Array(items) if is_index(segment) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(value)
}

fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Equality as a `where` means it: `null` matches missing, and an array column also equals
/// each of its elements.
fn field_eq(value: Option<&Value>, q: &Value, m: &mut Meter) -> bool {
    match value {
        None => q.is_null(),
        Some(v) => {
            values_equal(v, q, m)
                || matches!(v, Value::Array(items) if items.iter().any(|e| values_equal(e, q, m)))
        }
    }
}

/// Structural equality; numbers by value; a Date equals a Date or ISO string of the same time.
/// Stops (unequal) once `m` is over its budget.
fn values_equal(a: &Value, b: &Value, m: &mut Meter) -> bool {
    if m.over() {
        return false;
    }
    m.spend(1);
    if let Some(t) = date_of(a) {
        return time_of(b) == Some(t);
    }
    if let Some(t) = date_of(b) {
        return time_of(a) == Some(t);
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::String(x), Value::String(y)) => {
            m.spend(string_steps(x, y));
            x == y
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q, m))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| values_equal(p, q, m)))
        }
        _ => false,
    }
}

/// How a row value compares with a range operand, if they are comparable at all.
fn compare(v: &Value, rhs: &Operand, m: &mut Meter) -> Option<Ordering> {
    m.spend(1);
    match (v, rhs) {
        (Value::Number(x), Operand::Num(y)) => num_cmp(x, y),
        (Value::String(x), Operand::Str(..) | Operand::Date(_)) => compare_str(x, rhs, m),
        (Value::Object(_), Operand::Date(t) | Operand::Str(_, Some(t))) => {
            date_of(v).map(|s| s.cmp(t))
        }
        _ => None,
    }
}

/// How a string compares with a range operand: strings by code point, Dates by time.
fn compare_str(x: &str, rhs: &Operand, m: &mut Meter) -> Option<Ordering> {
    match rhs {
        Operand::Str(y, _) => {
            m.spend(string_steps(x, y));
            Some(x.cmp(y.as_str()))
        }
        Operand::Date(t) => parse_iso(x).map(|s| s.cmp(t)),
        Operand::Num(_) => None,
    }
}

/// Exact for two integers, by `f64` otherwise (JSON numbers are never NaN).
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// The time of a `{"__type":"Date","iso":…}` object whose `iso` parses.
fn date_of(v: &Value) -> Option<Instant> {
    let o = v.as_object()?;
    if o.get("__type")?.as_str()? != "Date" {
        return None;
    }
    parse_iso(o.get("iso")?.as_str()?)
}

/// The time a Date object or an ISO-8601 string stands for.
fn time_of(v: &Value) -> Option<Instant> {
    match v {
        Value::String(s) => parse_iso(s),
        Value::Object(_) => date_of(v),
        _ => None,
    }
}

/// The time (ms since the epoch) a Date object or an ISO-8601 string stands for.
pub fn time_ms(v: &Value) -> Option<i64> {
    time_of(v).map(|ns| ns.div_euclid(1_000_000) as i64)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing `where`

fn parse_conjunction(obj: &Map<String, Value>) -> Result<Cond, QueryError> {
    let mut all = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        match key.as_str() {
            "$and" => all.push(Cond::And(parse_branches("$and", value)?)),
            "$or" => all.push(Cond::Or(parse_branches("$or", value)?)),
            op if op.starts_with('$') => return Err(QueryError::UnknownOperator(op.to_owned())),
            _ => all.push(parse_field(key, value)?),
        }
    }
    Ok(Cond::And(all))
}

fn parse_branches(op: &str, value: &Value) -> Result<Vec<Cond>, QueryError> {
    let bad = |why: &str| QueryError::BadOperand {
        op: op.to_owned(),
        why: why.to_owned(),
    };
    let branches = value
        .as_array()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| bad("expects a non-empty array of conditions"))?;
    branches
        .iter()
        .map(|b| match b {
            Value::Object(o) => parse_conjunction(o),
            _ => Err(bad("every element must be a condition object")),
        })
        .collect()
}

fn parse_field(key: &str, value: &Value) -> Result<Cond, QueryError> {
    let tests = match value {
        Value::Object(o) if o.keys().any(|k| k.starts_with('$')) => parse_operators(key, o)?,
        other => vec![Test::Eq(other.clone())],
    };
    Ok(Cond::Field {
        key: key.to_owned(),
        path: key.split('.').map(str::to_owned).collect(),
        tests,
    })
}

fn parse_operators(field: &str, ops: &Map<String, Value>) -> Result<Vec<Test>, QueryError> {
    let bad = |op: &str, why: &str| QueryError::BadOperand {
        op: op.to_owned(),
        why: why.to_owned(),
    };
    let options = match ops.get("$options") {
        None => "",
        Some(_) if !ops.contains_key("$regex") => return Err(bad("$options", "needs $regex")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("$options", "expects a string")),
    };
    let array = |op: &str, arg: &Value| {
        arg.as_array()
            .cloned()
            .ok_or_else(|| bad(op, "expects an array"))
    };
    let mut tests = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        let test = match op.as_str() {
            "$ne" => Test::Ne(arg.clone()),
            "$lt" => Test::Cmp(Cmp::Lt, operand(op, arg)?),
            "$lte" => Test::Cmp(Cmp::Lte, operand(op, arg)?),
            "$gt" => Test::Cmp(Cmp::Gt, operand(op, arg)?),
            "$gte" => Test::Cmp(Cmp::Gte, operand(op, arg)?),
            "$in" => Test::In(array(op, arg)?),
            "$nin" => Test::Nin(array(op, arg)?),
            "$all" => Test::All(array(op, arg)?),
            "$size" => Test::Size(size(arg).ok_or_else(|| bad(op, "expects an integer >= 0"))?),
            "$exists" => Test::Exists(arg.as_bool().ok_or_else(|| bad(op, "expects a boolean"))?),
            "$regex" => match arg {
                Value::String(pattern) => Test::Regex(Regex::new(pattern, options)?),
                _ => return Err(bad(op, "expects a string")),
            },
            "$options" => continue,
            unknown if unknown.starts_with('$') => {
                return Err(QueryError::UnknownOperator(unknown.to_owned()));
            }
            plain => {
                return Err(QueryError::MixedCondition {
                    field: field.to_owned(),
                    key: plain.to_owned(),
                });
            }
        };
        tests.push(test);
    }
    Ok(tests)
}

fn operand(op: &str, arg: &Value) -> Result<Operand, QueryError> {
    let bad = |why: &str| QueryError::BadOperand {
        op: op.to_owned(),
        why: why.to_owned(),
    };
    match arg {
        Value::Number(n) => Ok(Operand::Num(n.clone())),
        Value::String(s) => Ok(Operand::Str(s.clone(), parse_iso(s))),
        Value::Object(o) if o.get("__type").and_then(Value::as_str) == Some("Date") => date_of(arg)
            .map(Operand::Date)
            .ok_or_else(|| bad("Date whose iso is not an ISO-8601 time")),
        _ => Err(bad("expects a number, a string or a Date")),
    }
}

/// A `$size` operand: a non-negative integer (`2.0` included).
fn size(arg: &Value) -> Option<usize> {
    if let Some(n) = arg.as_u64() {
        return usize::try_from(n).ok();
    }
    let f = arg.as_f64()?;
    // Only integral values in range; anything larger cannot be an array's length anyway.
    (f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as usize)
}

// ---------------------------------------------------------------------------------------------
// Index hints

fn pinned_ids(cond: &Cond) -> Option<Vec<String>> {
    match cond {
        Cond::Field { key, tests, .. } if key == "objectId" => tests
            .iter()
            .filter_map(test_ids)
            .reduce(|a, b| intersect(&a, &b)),
        Cond::Field { .. } => None,
        Cond::And(all) => all
            .iter()
            .filter_map(pinned_ids)
            .reduce(|a, b| intersect(&a, &b)),
        Cond::Or(any) => {
            let mut union = Vec::new();
            for branch in any {
                for id in pinned_ids(branch)? {
                    push_unique(&mut union, id);
                }
            }
            Some(union)
        }
    }
}

fn requires_true(cond: &Cond, column: &str) -> bool {
    match cond {
        Cond::Field { key, tests, .. } if key == column => tests
            .iter()
            .any(|t| matches!(t, Test::Eq(Value::Bool(true)))),
        Cond::Field { .. } => false,
        Cond::And(all) => all.iter().any(|c| requires_true(c, column)),
        Cond::Or(any) => any.iter().all(|c| requires_true(c, column)),
    }
}

fn test_ids(test: &Test) -> Option<Vec<String>> {
    match test {
        Test::Eq(Value::String(id)) => Some(vec![id.clone()]),
        Test::In(list) => {
            let mut ids = Vec::new();
            for id in list.iter().filter_map(Value::as_str) {
                push_unique(&mut ids, id.to_owned());
            }
            Some(ids)
        }
        _ => None,
    }
}

fn required_members(cond: &Cond) -> Vec<String> {
    let mut out = Vec::new();
    match cond {
        Cond::Field { key, tests, .. } if key == "m" => {
            for test in tests {
                let ids: Vec<&str> = match test {
                    Test::Eq(Value::String(id)) => vec![id],
                    Test::Eq(Value::Array(list)) if list.iter().all(Value::is_string) => {
                        list.iter().filter_map(Value::as_str).collect()
                    }
                    Test::All(list) => list.iter().filter_map(Value::as_str).collect(),
                    Test::In(list) if list.len() == 1 => list[0].as_str().into_iter().collect(),
                    _ => Vec::new(),
                };
                for id in ids {
                    push_unique(&mut out, id.to_owned());
                }
            }
        }
        Cond::Field { .. } => {}
        Cond::And(all) => {
            for c in all {
                for id in required_members(c) {
                    push_unique(&mut out, id);
                }
            }
        }
        Cond::Or(any) => {
            let mut branches = any.iter().map(required_members);
            if let Some(first) = branches.next() {
                out = branches.fold(first, |a, b| intersect(&a, &b));
            }
        }
    }
    out
}

fn push_unique(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// The elements of `a` also in `b`, in `a`'s order.
fn intersect(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Sorting

#[derive(Clone, Debug)]
struct SortKey {
    path: Vec<String>,
    descending: bool,
    /// One of [`DATE_COLUMNS`]: ISO strings sort as times.
    date_column: bool,
}

fn parse_sort(sort: &str) -> Result<Vec<SortKey>, QueryError> {
    let mut keys = Vec::new();
    for entry in sort.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (descending, name) = match entry.strip_prefix('-') {
            Some(name) => (true, name.trim()),
            None => (false, entry),
        };
        if name.is_empty() || name.starts_with('-') {
            return Err(QueryError::BadSort(entry.to_owned()));
        }
        keys.push(SortKey {
            path: name.split('.').map(str::to_owned).collect(),
            descending,
            date_column: DATE_COLUMNS.contains(&name),
        });
    }
    Ok(keys)
}

/// A column's value reduced to what sorting looks at; its order is total.
#[derive(Debug)]
enum SortValue<'r> {
    Missing,
    Num(f64),
    Str(&'r str),
    /// Objects (rank 3) and arrays (rank 4), ordered by their JSON text.
    Json(u8, String),
    Bool(bool),
    Date(Instant),
}

impl SortKey {
    fn value<'r>(&self, row: &'r Map<String, Value>) -> SortValue<'r> {
        match lookup(row, &self.path) {
            None | Some(Value::Null) => SortValue::Missing,
            Some(Value::Bool(b)) => SortValue::Bool(*b),
            Some(Value::Number(n)) => SortValue::Num(n.as_f64().unwrap_or(0.0)),
            Some(Value::String(s)) => match self.date_column.then(|| parse_iso(s)).flatten() {
                Some(t) => SortValue::Date(t),
                None => SortValue::Str(s),
            },
            Some(v @ Value::Object(_)) => match date_of(v) {
                Some(t) => SortValue::Date(t),
                None => SortValue::Json(3, v.to_string()),
            },
            Some(v @ Value::Array(_)) => SortValue::Json(4, v.to_string()),
        }
    }
}

impl SortValue<'_> {
    /// Bytes a comparison may read.
    fn bytes(&self) -> usize {
        match self {
            SortValue::Str(s) => s.len(),
            SortValue::Json(_, s) => s.len(),
            _ => 0,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            SortValue::Missing => 0,
            SortValue::Num(_) => 1,
            SortValue::Str(_) => 2,
            SortValue::Json(rank, _) => *rank,
            SortValue::Bool(_) => 5,
            SortValue::Date(_) => 6,
        }
    }

    fn total_cmp(&self, other: &SortValue<'_>) -> Ordering {
        match (self, other) {
            (SortValue::Num(a), SortValue::Num(b)) => a.total_cmp(b),
            (SortValue::Str(a), SortValue::Str(b)) => a.cmp(b),
            (SortValue::Json(ra, a), SortValue::Json(rb, b)) => ra.cmp(rb).then_with(|| a.cmp(b)),
            (SortValue::Bool(a), SortValue::Bool(b)) => a.cmp(b),
            (SortValue::Date(a), SortValue::Date(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn compare_sort_keys(keys: &[SortKey], a: &[SortValue<'_>], b: &[SortValue<'_>]) -> Ordering {
    for ((key, x), y) in keys.iter().zip(a).zip(b) {
        let ord = x.total_cmp(y);
        let ord = if key.descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

// ---------------------------------------------------------------------------------------------
// ISO-8601 times

/// `YYYY-MM-DD`, optionally followed by `T` (or a space) `HH:MM[:SS[.fraction]]` and a zone
/// (`Z`, `±HH:MM`, `±HHMM`, `±HH`; none means UTC). Fractions beyond nanoseconds are ignored.
fn parse_iso(s: &str) -> Option<Instant> {
    let b = s.as_bytes();
    let year = i64::from(digits(b, 0, 4)?);
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !(1..=12).contains(&month) {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (mut hour, mut minute, mut second, mut nanos, mut offset) = (0u32, 0u32, 0u32, 0i128, 0i64);
    let mut i = 10;
    if i < b.len() {
        if !matches!(b[i], b'T' | b't' | b' ') {
            return None;
        }
        hour = digits(b, i + 1, 2)?;
        if b.get(i + 3) != Some(&b':') {
            return None;
        }
        minute = digits(b, i + 4, 2)?;
        i += 6;
        if b.get(i) == Some(&b':') {
            second = digits(b, i + 1, 2)?;
            i += 3;
            if matches!(b.get(i), Some(b'.' | b',')) {
                i += 1;
                let start = i;
                let mut scale = 1_000_000_000i128;
                while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                    scale /= 10;
                    nanos += i128::from(d - b'0') * scale;
                    i += 1;
                }
                if i == start {
                    return None;
                }
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        match b.get(i) {
            None => {}
            Some(b'Z' | b'z') => i += 1,
            Some(&sign @ (b'+' | b'-')) => {
                let oh = digits(b, i + 1, 2)?;
                i += 3;
                let colon = b.get(i) == Some(&b':');
                if colon {
                    i += 1;
                }
                let om = if colon || i < b.len() {
                    let m = digits(b, i, 2)?;
                    i += 2;
                    m
                } else {
                    0
                };
                if oh > 23 || om > 59 {
                    return None;
                }
                let secs = i64::from(oh * 3600 + om * 60);
                offset = if sign == b'+' { secs } else { -secs };
            }
            Some(_) => return None,
        }
        if i != b.len() {
            return None;
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// `n` ASCII digits at `at`, as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let run = b.get(at..at.checked_add(n)?)?;
    run.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// `$regex`: a linear-time subset
//
// Parsed into pieces (an atom and a quantifier), compiled to a Thompson NFA and run by keeping
// the set of live states per input character (Pike's simulation without captures). Each
// character costs at most two visits per instruction, so a match is O(pattern × text) whatever
// the pattern: there is no backtracking to blow up.

/// A compiled `$regex`.
#[derive(Clone, Debug)]
struct Regex {
    prog: Vec<Inst>,
    icase: bool,
    multiline: bool,
    dotall: bool,
    /// Starts with `^` outside multiline mode: only a match at position 0 counts.
    anchored: bool,
}

#[derive(Clone, Debug)]
enum Inst {
    /// A literal (already case-folded when matching case-insensitively).
    Char(char),
    /// `.`
    Any,
    Class(Class),
    /// Continue at both.
    Split(usize, usize),
    Jmp(usize),
    /// `^`
    LineStart,
    /// `$`
    LineEnd,
    Match,
}

#[derive(Clone, Debug)]
struct Class {
    negated: bool,
    items: Vec<ClassItem>,
}

#[derive(Clone, Copy, Debug)]
enum ClassItem {
    Range(char, char),
    /// `\d` (`true`: `\D`), ASCII digits.
    Digit(bool),
    /// `\w` (`true`: `\W`), ASCII letters, digits and `_`.
    Word(bool),
    /// `\s` (`true`: `\S`), ASCII whitespace.
    Space(bool),
}

#[derive(Clone, Debug)]
enum Atom {
    Char(char),
    Any,
    Class(Class),
    LineStart,
    LineEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quant {
    One,
    Star,
    Plus,
    Opt,
}

#[derive(Clone, Debug)]
struct Piece {
    atom: Atom,
    quant: Quant,
}

impl Regex {
    /// Compiles `pattern` with `$options` (`i` case-insensitive, `m` multiline, `s` dot-all).
    fn new(pattern: &str, options: &str) -> Result<Regex, QueryError> {
        let (mut icase, mut multiline, mut dotall) = (false, false, false);
        for option in options.chars() {
            match option {
                'i' => icase = true,
                'm' => multiline = true,
                's' => dotall = true,
                other => {
                    return Err(QueryError::BadOperand {
                        op: "$options".to_owned(),
                        why: format!("unsupported option {other:?} (i, m and s are)"),
                    });
                }
            }
        }
        let pieces = parse_regex(pattern)?;
        let anchored = !multiline
            && matches!(
                pieces.first(),
                Some(Piece {
                    atom: Atom::LineStart,
                    ..
                })
            );
        let mut prog = Vec::with_capacity(pieces.len() * 3 + 1);
        for Piece { atom, quant } in pieces {
            let inst = match atom {
                Atom::Char(c) => Inst::Char(if icase { fold(c) } else { c }),
                Atom::Any => Inst::Any,
                Atom::Class(class) => Inst::Class(class),
                Atom::LineStart => Inst::LineStart,
                Atom::LineEnd => Inst::LineEnd,
            };
            let at = prog.len();
            match quant {
                Quant::One => prog.push(inst),
                Quant::Star => prog.extend([Inst::Split(at + 1, at + 3), inst, Inst::Jmp(at)]),
                Quant::Plus => prog.extend([inst, Inst::Split(at, at + 2)]),
                Quant::Opt => prog.extend([Inst::Split(at + 1, at + 2), inst]),
            }
        }
        prog.push(Inst::Match);
        Ok(Regex {
            prog,
            icase,
            multiline,
            dotall,
            anchored,
        })
    }

    /// Whether the pattern matches anywhere in `text`.
    #[cfg(test)]
    fn is_match(&self, text: &str) -> bool {
        self.run(text).0
    }

    /// Whether the pattern matches anywhere in `text`, spending the steps it takes from `m`;
    /// false once `m` runs out.
    fn matches_within(&self, text: &str, m: &mut Meter) -> bool {
        let (found, steps) = self.run_within(text, usize::try_from(m.left()).unwrap_or(usize::MAX));
        // Giving up leaves the steps just above what was left: `m` is over.
        m.spend(steps as u64);
        found
    }

    #[cfg(test)]
    fn run(&self, text: &str) -> (bool, usize) {
        self.run_within(text, usize::MAX)
    }

    /// The answer, and the instructions visited (bounded by 2 × program × (characters + 1)).
    /// Gives up (no match) once more than `max` steps are taken, at the end of a character.
    fn run_within(&self, text: &str, max: usize) -> (bool, usize) {
        let mut current = Threads::new(self.prog.len());
        let mut next = Threads::new(self.prog.len());
        let mut stack = Vec::with_capacity(self.prog.len());
        let mut steps = 0;
        let mut rest = text.chars();
        let here = Position::new(None, &rest);
        if self.add(&mut current, 0, &here, &mut stack, &mut steps) {
            return (true, steps);
        }
        while let Some(c) = rest.next() {
            if (self.anchored && current.dense.is_empty()) || steps > max {
                return (false, steps);
            }
            let there = Position::new(Some(c), &rest);
            next.clear();
            for &pc in &current.dense {
                steps += 1;
                if self.consumes(pc, c)
                    && self.add(&mut next, pc + 1, &there, &mut stack, &mut steps)
                {
                    return (true, steps);
                }
            }
            if !self.anchored && self.add(&mut next, 0, &there, &mut stack, &mut steps) {
                return (true, steps);
            }
            std::mem::swap(&mut current, &mut next);
        }
        (false, steps)
    }

    /// Adds `pc` and everything reachable from it without consuming input; true on reaching
    /// [`Inst::Match`].
    fn add(
        &self,
        list: &mut Threads,
        pc: usize,
        at: &Position,
        stack: &mut Vec<usize>,
        steps: &mut usize,
    ) -> bool {
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if !list.insert(pc) {
                continue;
            }
            *steps += 1;
            match self.prog[pc] {
                Inst::Jmp(to) => stack.push(to),
                Inst::Split(a, b) => stack.extend([b, a]),
                Inst::LineStart if at.line_start(self.multiline) => stack.push(pc + 1),
                Inst::LineEnd if at.line_end(self.multiline) => stack.push(pc + 1),
                Inst::Match => return true,
                _ => {}
            }
        }
        false
    }

    fn consumes(&self, pc: usize, c: char) -> bool {
        match &self.prog[pc] {
            Inst::Char(want) if self.icase => fold(c) == *want,
            Inst::Char(want) => c == *want,
            Inst::Any => self.dotall || c != '\n',
            Inst::Class(class) => class.matches(c, self.icase),
            _ => false,
        }
    }
}

/// A set of program counters, in insertion order.
struct Threads {
    dense: Vec<usize>,
    on: Vec<bool>,
}

impl Threads {
    fn new(n: usize) -> Threads {
        Threads {
            dense: Vec::with_capacity(n),
            on: vec![false; n],
        }
    }

    fn insert(&mut self, pc: usize) -> bool {
        let fresh = !self.on[pc];
        if fresh {
            self.on[pc] = true;
            self.dense.push(pc);
        }
        fresh
    }

    fn clear(&mut self) {
        for &pc in &self.dense {
            self.on[pc] = false;
        }
        self.dense.clear();
    }
}

/// What the anchors look at: the characters either side of a position.
struct Position {
    prev: Option<char>,
    next: Option<char>,
    /// `next` is a newline and the last character.
    final_newline: bool,
}

impl Position {
    fn new(prev: Option<char>, rest: &Chars<'_>) -> Position {
        let mut ahead = rest.clone();
        let next = ahead.next();
        Position {
            prev,
            next,
            final_newline: next == Some('\n') && ahead.next().is_none(),
        }
    }

    fn line_start(&self, multiline: bool) -> bool {
        self.prev.is_none() || (multiline && self.prev == Some('\n'))
    }

    /// PCRE's `$`: the end, or before a final newline; in multiline mode before any newline.
    fn line_end(&self, multiline: bool) -> bool {
        self.next.is_none() || self.final_newline || (multiline && self.next == Some('\n'))
    }
}

impl Class {
    fn matches(&self, c: char, icase: bool) -> bool {
        let has = |x: char| self.items.iter().any(|item| item.has(x));
        let hit = has(c) || (icase && (has(fold(c)) || upper(c).is_some_and(has)));
        hit != self.negated
    }
}

impl ClassItem {
    fn has(self, c: char) -> bool {
        match self {
            ClassItem::Range(lo, hi) => lo <= c && c <= hi,
            ClassItem::Digit(negated) => c.is_ascii_digit() != negated,
            ClassItem::Word(negated) => (c.is_ascii_alphanumeric() || c == '_') != negated,
            ClassItem::Space(negated) => {
                matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r') != negated
            }
        }
    }
}

/// Simple case folding: the lowercase of `c` when it is one character, else `c`.
fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

fn upper(c: char) -> Option<char> {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => Some(u),
        _ => None,
    }
}

fn parse_regex(pattern: &str) -> Result<Vec<Piece>, QueryError> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(QueryError::RegexTooLong { len: pattern.len() });
    }
    let mut parser = RegexParser {
        pattern,
        chars: pattern.chars().collect(),
        pos: 0,
        pieces: Vec::new(),
    };
    parser.parse()?;
    Ok(parser.pieces)
}

struct RegexParser<'p> {
    pattern: &'p str,
    chars: Vec<char>,
    pos: usize,
    pieces: Vec<Piece>,
}

/// One escaped character: a literal, or a class shorthand (`\d`).
enum Escaped {
    Char(char),
    Item(ClassItem),
}

impl RegexParser<'_> {
    fn unsupported(&self, construct: &str) -> QueryError {
        QueryError::UnsupportedRegex {
            pattern: self.pattern.to_owned(),
            construct: construct.to_owned(),
        }
    }

    fn invalid(&self, why: &str) -> QueryError {
        QueryError::InvalidRegex {
            pattern: self.pattern.to_owned(),
            why: why.to_owned(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn push(&mut self, atom: Atom) {
        self.pieces.push(Piece {
            atom,
            quant: Quant::One,
        });
    }

    fn parse(&mut self) -> Result<(), QueryError> {
        while let Some(c) = self.bump() {
            match c {
                '\\' => self.escape()?,
                '^' => self.push(Atom::LineStart),
                '$' => self.push(Atom::LineEnd),
                '.' => self.push(Atom::Any),
                '[' => {
                    let class = self.class()?;
                    self.push(Atom::Class(class));
                }
                '*' => self.quantify(Quant::Star)?,
                '+' => self.quantify(Quant::Plus)?,
                '?' => self.quantify(Quant::Opt)?,
                '{' if self.counted_repetition_ahead() => {
                    return Err(self.unsupported("counted repetition {n,m}"));
                }
                '(' | ')' => return Err(self.unsupported("groups and lookarounds (…)")),
                '|' => return Err(self.unsupported("alternation |")),
                literal => self.push(Atom::Char(literal)),
            }
        }
        Ok(())
    }

    /// After a backslash outside a class.
    fn escape(&mut self) -> Result<(), QueryError> {
        let e = self
            .bump()
            .ok_or_else(|| self.invalid("trailing backslash"))?;
        match e {
            // Java/PCRE quoting: literal up to `\E` or the end of the pattern.
            'Q' => {
                while let Some(c) = self.bump() {
                    if c == '\\' && self.peek() == Some('E') {
                        self.pos += 1;
                        break;
                    }
                    self.push(Atom::Char(c));
                }
            }
            // A stray `\E` is ignored, as in PCRE and Java.
            'E' => {}
            _ => {
                let atom = match self.escaped(e)? {
                    Escaped::Char(c) => Atom::Char(c),
                    Escaped::Item(item) => Atom::Class(Class {
                        negated: false,
                        items: vec![item],
                    }),
                };
                self.push(atom);
            }
        }
        Ok(())
    }

    fn escaped(&self, e: char) -> Result<Escaped, QueryError> {
        Ok(match e {
            'd' => Escaped::Item(ClassItem::Digit(false)),
            'D' => Escaped::Item(ClassItem::Digit(true)),
            'w' => Escaped::Item(ClassItem::Word(false)),
            'W' => Escaped::Item(ClassItem::Word(true)),
            's' => Escaped::Item(ClassItem::Space(false)),
            'S' => Escaped::Item(ClassItem::Space(true)),
            'n' => Escaped::Char('\n'),
            'r' => Escaped::Char('\r'),
            't' => Escaped::Char('\t'),
            'f' => Escaped::Char('\u{c}'),
            letter if letter.is_ascii_alphanumeric() => {
                return Err(self.unsupported(&format!("the escape \\{letter}")));
            }
            // Any other escaped character stands for itself (`\.`, `\\`, `\/`, `\-`, …).
            other => Escaped::Char(other),
        })
    }

    fn quantify(&mut self, quant: Quant) -> Result<(), QueryError> {
        let repeatable = self.pieces.last().is_some_and(|p| {
            p.quant == Quant::One && !matches!(p.atom, Atom::LineStart | Atom::LineEnd)
        });
        if !repeatable {
            return Err(self.invalid("nothing to repeat"));
        }
        match self.peek() {
            // Lazy: the same set of strings matches, and only whether one does matters here.
            Some('?') => self.pos += 1,
            Some('+') => return Err(self.unsupported("possessive quantifiers")),
            _ => {}
        }
        if let Some(last) = self.pieces.last_mut() {
            last.quant = quant;
        }
        Ok(())
    }

    /// Whether the `{` just read opens `{n}`, `{n,}`, `{n,m}` or `{,m}`; otherwise it is a
    /// literal, as in PCRE.
    fn counted_repetition_ahead(&self) -> bool {
        let rest = &self.chars[self.pos..];
        let mut i = 0;
        let mut digits = 0;
        while rest.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
            digits += 1;
        }
        if rest.get(i) == Some(&',') {
            i += 1;
            while rest.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
                digits += 1;
            }
        }
        digits > 0 && rest.get(i) == Some(&'}')
    }

    /// After `[`: up to and including the closing `]`.
    fn class(&mut self) -> Result<Class, QueryError> {
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self
                .bump()
                .ok_or_else(|| self.invalid("unterminated character class"))?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = match self.class_member(c)? {
                Escaped::Item(item) => {
                    items.push(item);
                    continue;
                }
                Escaped::Char(lo) => lo,
            };
            let range =
                self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']');
            if !range {
                items.push(ClassItem::Range(lo, lo));
                continue;
            }
            self.pos += 1;
            let c = self
                .bump()
                .ok_or_else(|| self.invalid("unterminated character class"))?;
            let hi = match self.class_member(c)? {
                Escaped::Char(hi) => hi,
                Escaped::Item(_) => return Err(self.invalid("a range cannot end in a class")),
            };
            if hi < lo {
                return Err(self.invalid("range out of order"));
            }
            items.push(ClassItem::Range(lo, hi));
        }
        Ok(Class { negated, items })
    }

    fn class_member(&mut self, c: char) -> Result<Escaped, QueryError> {
        match c {
            '[' if matches!(self.peek(), Some(':' | '=' | '.')) => {
                Err(self.unsupported("POSIX classes [:…:]"))
            }
            '\\' => {
                let e = self
                    .bump()
                    .ok_or_else(|| self.invalid("trailing backslash"))?;
                if matches!(e, 'Q' | 'E') {
                    return Err(self.unsupported("\\Q…\\E inside a class"));
                }
                self.escaped(e)
            }
            c => Ok(Escaped::Char(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn q(where_json: &str) -> Query {
        Query::parse(Some(where_json), None, None, None)
            .unwrap_or_else(|e| panic!("{where_json}: {e}"))
    }

    fn hit(where_json: Value, r: &Value) -> bool {
        q(&where_json.to_string()).matches(&row(r.clone()))
    }

    #[test]
    fn conditions_on_members_match_the_whole_member_list() {
        let all: std::sync::Arc<[String]> = ["a", "b", "c", "d"].map(String::from).into();
        // The row's column holds the first two only.
        let cut = row(json!({"objectId": "c1", "m": ["a", "b"]}));
        let hits = |cond: Value| {
            let rows = vec![(cut.clone(), Some(&all as &dyn MemberSet))];
            q(&cond.to_string())
                .apply_with_members(rows, &mut Meter::unlimited())
                .unwrap()
                .len()
                == 1
        };
        for yes in [
            json!({"m": "d"}),
            json!({"m": ["a", "b", "c", "d"]}),
            json!({"m": {"$size": 4}}),
            json!({"m": {"$all": ["a", "d"]}}),
            json!({"m": {"$in": ["x", "c"]}}),
            json!({"m": {"$ne": "x"}}),
            json!({"m": {"$nin": ["x"]}}),
            json!({"m": {"$gt": "c"}}),
            json!({"m": {"$regex": "^d$"}}),
            json!({"m": {"$exists": true}}),
            json!({"m.3": "d"}),
        ] {
            assert!(hits(yes.clone()), "{yes}");
        }
        for no in [
            json!({"m": "x"}),
            json!({"m": ["a", "b"]}),
            json!({"m": {"$size": 2}}),
            json!({"m": {"$all": ["a", "x"]}}),
            json!({"m": {"$ne": "d"}}),
            json!({"m": {"$nin": ["d"]}}),
            json!({"m": {"$gt": "d"}}),
            json!({"m": {"$exists": false}}),
            json!({"m.4": "d"}),
            json!({"m.x": "d"}),
        ] {
            assert!(!hits(no.clone()), "{no}");
        }
        // The rows answered keep the column as it was.
        let rows = vec![(cut.clone(), Some(&all as &dyn MemberSet))];
        let out = q(r#"{"m": "d"}"#)
            .apply_with_members(rows, &mut Meter::unlimited())
            .unwrap();
        assert_eq!(out[0]["m"], json!(["a", "b"]));
    }

    fn err(where_json: &str) -> QueryError {
        Query::parse(Some(where_json), None, None, None).expect_err(where_json)
    }

    fn conv() -> Value {
        json!({
            "objectId": "c1",
            "name": "js-realtime-sdk-testconv",
            "m": ["hjiang", "leeyeh"],
            "c": "hjiang",
            "tr": false,
            "sys": false,
            "count": 3,
            "score": 2.5,
            "createdAt": "2024-05-01T10:00:00.000Z",
            "updatedAt": {"__type": "Date", "iso": "2024-05-02T10:00:00.000Z"},
            "lm": {"__type": "Date", "iso": "2024-05-03T10:00:00.000Z"},
            "attr": {"x": 1, "tags": ["a", "b"], "deep": {"y": "z"}},
            "empty": null
        })
    }

    fn date(iso: &str) -> Value {
        json!({"__type": "Date", "iso": iso})
    }

    // -- equality and its operators -----------------------------------------------------------

    #[test]
    fn equality_on_scalars() {
        let r = conv();
        assert!(hit(json!({"objectId": "c1"}), &r));
        assert!(!hit(json!({"objectId": "c2"}), &r));
        assert!(hit(json!({"count": 3}), &r));
        assert!(hit(json!({"count": 3.0}), &r), "numbers compare by value");
        assert!(!hit(json!({"count": "3"}), &r), "no string/number coercion");
        assert!(hit(json!({"tr": false}), &r));
        assert!(!hit(json!({"tr": true}), &r));
        assert!(
            hit(json!({"nothing": null}), &r),
            "null matches a missing column"
        );
        assert!(hit(json!({"empty": null}), &r));
        assert!(!hit(json!({"name": null}), &r));
        assert!(
            hit(json!({"objectId": "c1", "tr": false}), &r),
            "keys are a conjunction"
        );
        assert!(!hit(json!({"objectId": "c1", "tr": true}), &r));
        assert!(hit(json!({}), &r));
    }

    #[test]
    fn equality_on_arrays_and_objects() {
        let r = conv();
        assert!(
            hit(json!({"m": "hjiang"}), &r),
            "a scalar equals an array containing it"
        );
        assert!(!hit(json!({"m": "nobody"}), &r));
        assert!(hit(json!({"m": ["hjiang", "leeyeh"]}), &r), "whole array");
        assert!(
            !hit(json!({"m": ["leeyeh", "hjiang"]}), &r),
            "order matters"
        );
        assert!(!hit(json!({"m": ["hjiang"]}), &r));
        assert!(hit(
            json!({"attr": {"x": 1.0, "tags": ["a", "b"], "deep": {"y": "z"}}}),
            &r
        ));
        assert!(!hit(json!({"attr": {"x": 1}}), &r), "objects match whole");
        let nested = json!({"m": [["a", "b"], "c"]});
        assert!(
            hit(json!({"m": ["a", "b"]}), &nested),
            "an array element that is an array"
        );
    }

    #[test]
    fn ne() {
        let r = conv();
        assert!(hit(json!({"name": {"$ne": "not-this-name"}}), &r));
        assert!(!hit(
            json!({"name": {"$ne": "js-realtime-sdk-testconv"}}),
            &r
        ));
        assert!(
            hit(json!({"missing": {"$ne": "x"}}), &r),
            "missing is not equal"
        );
        assert!(!hit(json!({"missing": {"$ne": null}}), &r));
        assert!(hit(json!({"name": {"$ne": null}}), &r));
        assert!(
            !hit(json!({"m": {"$ne": "hjiang"}}), &r),
            "the array contains it"
        );
        assert!(hit(json!({"m": {"$ne": "nobody"}}), &r));
        assert!(hit(json!({"objectId": {"$ne": "0"}}), &r));
    }

    #[test]
    fn ranges_on_numbers_and_strings() {
        let r = conv();
        for (w, want) in [
            (json!({"count": {"$lt": 4}}), true),
            (json!({"count": {"$lt": 3}}), false),
            (json!({"count": {"$lte": 3}}), true),
            (json!({"count": {"$lte": 2.99}}), false),
            (json!({"count": {"$gt": 2}}), true),
            (json!({"count": {"$gt": 3}}), false),
            (json!({"count": {"$gte": 3}}), true),
            (json!({"count": {"$gte": 3.01}}), false),
            (json!({"score": {"$gt": 2, "$lt": 3}}), true),
            (json!({"score": {"$gt": 2.5, "$lt": 3}}), false),
            (json!({"name": {"$gt": "js"}}), true),
            (json!({"name": {"$lt": "js"}}), false),
            (json!({"name": {"$gte": "js-realtime-sdk-testconv"}}), true),
            (json!({"count": {"$gt": "1"}}), false),
            (json!({"name": {"$gt": 1}}), false),
            (json!({"missing": {"$lt": 10}}), false),
            (json!({"attr.tags": {"$gte": "b"}}), true),
            (json!({"attr.tags": {"$gt": "b"}}), false),
        ] {
            assert_eq!(hit(w.clone(), &r), want, "{w}");
        }
        let big = json!({"n": 9_007_199_254_740_993_u64});
        assert!(
            hit(json!({"n": {"$gt": 9_007_199_254_740_992_u64}}), &big),
            "exact integers"
        );
        assert!(hit(json!({"n": -1}), &json!({"n": -1.0})));
    }

    #[test]
    fn ranges_on_dates_in_both_representations() {
        let r = conv();
        let now = date("2030-01-01T00:00:00.000Z");
        let epoch = date("1970-01-01T00:00:00.000Z");
        for column in ["createdAt", "updatedAt", "lm"] {
            assert!(hit(json!({column: {"$lt": now}}), &r), "{column}");
            assert!(!hit(json!({column: {"$lt": epoch}}), &r), "{column}");
            assert!(hit(json!({column: {"$lte": now}}), &r), "{column}");
            assert!(!hit(json!({column: {"$lte": epoch}}), &r), "{column}");
            assert!(hit(json!({column: {"$gt": epoch}}), &r), "{column}");
            assert!(!hit(json!({column: {"$gt": now}}), &r), "{column}");
            assert!(hit(json!({column: {"$gte": epoch}}), &r), "{column}");
            assert!(!hit(json!({column: {"$gte": now}}), &r), "{column}");
        }
        // Boundaries, written differently from the row.
        let same = date("2024-05-01T12:00:00+02:00");
        assert!(hit(json!({"createdAt": {"$lte": same}}), &r));
        assert!(hit(json!({"createdAt": {"$gte": same}}), &r));
        assert!(!hit(json!({"createdAt": {"$lt": same}}), &r));
        assert!(hit(json!({"createdAt": same}), &r), "equality by time");
        assert!(hit(json!({"updatedAt": date("2024-05-02T10:00:00Z")}), &r));
        assert!(
            hit(json!({"updatedAt": "2024-05-02T10:00:00Z"}), &r),
            "string vs Date row"
        );
        assert!(!hit(
            json!({"updatedAt": date("2024-05-02T10:00:00.001Z")}),
            &r
        ));
        // A string operand reads as a time against a Date row, as a string against a string.
        assert!(hit(json!({"lm": {"$gt": "2024-05-03T09:59:59Z"}}), &r));
        assert!(
            hit(json!({"createdAt": {"$gt": "2024-05-01T10"}}), &r),
            "by code point"
        );
        // Dates never compare with numbers.
        assert!(!hit(json!({"count": {"$lt": now}}), &r));
        assert!(!hit(json!({"name": {"$lt": now}}), &r), "not an ISO string");
    }

    #[test]
    fn in_and_nin() {
        let r = conv();
        assert!(hit(json!({"objectId": {"$in": ["c0", "c1"]}}), &r));
        assert!(!hit(json!({"objectId": {"$in": ["c0", "c2"]}}), &r));
        assert!(!hit(json!({"objectId": {"$in": []}}), &r));
        assert!(
            hit(json!({"m": {"$in": ["nobody", "leeyeh"]}}), &r),
            "against an array column"
        );
        assert!(!hit(json!({"m": {"$in": ["nobody"]}}), &r));
        assert!(hit(json!({"missing": {"$in": [null]}}), &r));
        assert!(hit(json!({"count": {"$in": [3.0]}}), &r));
        assert!(hit(
            json!({"createdAt": {"$in": [date("2024-05-01T10:00:00Z")]}}),
            &r
        ));
        assert!(hit(json!({"objectId": {"$nin": ["c0", "c2"]}}), &r));
        assert!(!hit(json!({"objectId": {"$nin": ["c1"]}}), &r));
        assert!(!hit(json!({"m": {"$nin": ["leeyeh"]}}), &r));
        assert!(hit(json!({"m": {"$nin": ["nobody"]}}), &r));
        assert!(hit(json!({"missing": {"$nin": ["x"]}}), &r));
    }

    #[test]
    fn all_size_exists() {
        let r = conv();
        assert!(
            hit(json!({"m": {"$all": ["hjiang"]}}), &r),
            "containsMembers"
        );
        assert!(hit(json!({"m": {"$all": ["leeyeh", "hjiang"]}}), &r));
        assert!(!hit(json!({"m": {"$all": ["nobody"]}}), &r));
        assert!(!hit(json!({"m": {"$all": ["hjiang", "nobody"]}}), &r));
        assert!(!hit(json!({"m": {"$all": []}}), &r), "as MongoDB: nothing");
        assert!(
            hit(json!({"c": {"$all": ["hjiang"]}}), &r),
            "a scalar column"
        );
        assert!(!hit(json!({"missing": {"$all": ["x"]}}), &r));
        assert!(hit(json!({"m": {"$size": 2}}), &r));
        assert!(hit(json!({"m": {"$size": 2.0}}), &r));
        assert!(!hit(json!({"m": {"$size": 3}}), &r));
        assert!(
            !hit(json!({"name": {"$size": 24}}), &r),
            "only arrays have a size"
        );
        assert!(hit(json!({"attr.tags": {"$size": 2}}), &r));
        // withMembers(['hjiang','leeyeh']) as the SDK sends it.
        assert!(hit(
            json!({"objectId": "c1", "m": {"$size": 2, "$all": ["hjiang", "leeyeh"]}}),
            &r
        ));
        assert!(!hit(json!({"m": {"$size": 1, "$all": ["hjiang"]}}), &r));
        assert!(hit(json!({"name": {"$exists": true}}), &r));
        assert!(!hit(json!({"name": {"$exists": false}}), &r));
        assert!(hit(json!({"missing": {"$exists": false}}), &r));
        assert!(!hit(json!({"missing": {"$exists": true}}), &r));
        assert!(
            hit(json!({"empty": {"$exists": true}}), &r),
            "null is present"
        );
        assert!(hit(json!({"attr.deep.y": {"$exists": true}}), &r));
        assert!(hit(json!({"attr.deep.q": {"$exists": false}}), &r));
    }

    #[test]
    fn dotted_paths() {
        let r = conv();
        assert!(hit(json!({"attr.x": 1}), &r));
        assert!(!hit(json!({"attr.x": 2}), &r));
        assert!(hit(json!({"attr.deep.y": "z"}), &r));
        assert!(hit(json!({"attr.tags": "b"}), &r));
        assert!(hit(json!({"attr.x": {"$gte": 1, "$lt": 2}}), &r));
        assert!(hit(json!({"attr.nope.deeper": null}), &r));
        assert!(
            !hit(json!({"name.length": {"$exists": true}}), &r),
            "no path through a string"
        );
        assert!(
            hit(json!({"m.0": "hjiang"}), &r),
            "a numeric segment indexes"
        );
        assert!(hit(json!({"m.1": "leeyeh"}), &r));
        assert!(!hit(json!({"m.2": {"$exists": true}}), &r));
        assert!(!hit(json!({"m.+0": {"$exists": true}}), &r));
    }

    #[test]
    fn and_or_nesting() {
        let r = conv();
        assert!(hit(
            json!({"$or": [{"objectId": "x"}, {"objectId": "c1"}]}),
            &r
        ));
        assert!(!hit(
            json!({"$or": [{"objectId": "x"}, {"objectId": "y"}]}),
            &r
        ));
        assert!(hit(
            json!({"$and": [{"objectId": "c1"}, {"m": "hjiang"}]}),
            &r
        ));
        assert!(!hit(
            json!({"$and": [{"objectId": "c1"}, {"m": "nobody"}]}),
            &r
        ));
        let nested = json!({
            "tr": false,
            "$or": [
                {"$and": [{"count": {"$gt": 5}}, {"name": {"$exists": true}}]},
                {"$and": [{"count": {"$lte": 5}}, {"$or": [{"c": "x"}, {"c": "hjiang"}]}]}
            ]
        });
        assert!(hit(nested.clone(), &r));
        let mut other = conv();
        other["c"] = json!("someone");
        assert!(!hit(nested.clone(), &other));
        other["count"] = json!(6);
        assert!(hit(nested, &other));
    }

    // -- $regex ----------------------------------------------------------------------------------

    /// What the SDK's `ConversationQuery._quote` produces (including its first-`\E`-only quirk).
    fn quote(s: &str) -> String {
        format!("\\Q{}\\E", s.replacen("\\E", "\\E\\\\E\\Q", 1))
    }

    fn re(pattern: &str, options: &str) -> Regex {
        Regex::new(pattern, options).unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    fn regex_err(pattern: &str) -> QueryError {
        Regex::new(pattern, "").expect_err(pattern)
    }

    #[test]
    fn regex_contains_starts_ends_as_the_sdk_builds_them() {
        let r = conv();
        let name = |w: Value| hit(json!({"name": w}), &r);
        assert!(name(json!({"$regex": quote("realtime-sdk")})));
        assert!(!name(json!({"$regex": quote("REALTIME-SDK")})));
        assert!(name(
            json!({"$regex": format!("^{}", quote("js-realtime"))})
        ));
        assert!(!name(
            json!({"$regex": format!("^{}", quote("JS-REALTIME"))})
        ));
        assert!(!name(json!({"$regex": format!("^{}", quote("realtime"))})));
        assert!(name(json!({"$regex": format!("{}$", quote("testconv"))})));
        assert!(!name(json!({"$regex": format!("{}$", quote("TESTCONV"))})));
        assert!(!name(json!({"$regex": format!("{}$", quote("sdk"))})));
        // matches(/REALTIME-SDK/i) and without the flag.
        assert!(name(json!({"$regex": "REALTIME-SDK", "$options": "i"})));
        assert!(!name(json!({"$regex": "REALTIME-SDK"})));

        let special = r"a.b*c+d?(e)[f]{g}|h^i$j\k\Ql";
        assert!(re(&quote(special), "").is_match(&format!("xx{special}yy")));
        assert!(re(&quote("a.b"), "").is_match("a.b"));
        assert!(
            !re(&quote("a.b"), "").is_match("axb"),
            "quoted dot is literal"
        );
        assert!(
            !re(&quote("b*"), "").is_match("bbb"),
            "quoted star is literal"
        );
        assert!(re(&format!("^{}$", quote("(x)")), "").is_match("(x)"));
        // The SDK splits a `\E` inside the text out of the quote as `\\E`.
        let tricky = r"one\Etwo";
        assert_eq!(quote(tricky), r"\Qone\E\\E\Qtwo\E");
        assert!(re(&quote(tricky), "").is_match(r"say one\Etwo"));
        assert!(!re(&quote(tricky), "").is_match("say oneEtwo"));
        // Unterminated \Q runs to the end; stray \E is ignored; empty \Q\E is nothing.
        assert!(re(r"\Qa.(", "").is_match("a.("));
        assert!(re(r"a\Eb", "").is_match("ab"));
        assert!(re(r"a\Q\E*", "").is_match("b"), "the star repeats `a`");
        // A quantifier after \Q…\E repeats its last character, as in PCRE.
        assert!(re(r"^\Qab\E+$", "").is_match("abbb"));
        assert!(!re(r"^\Qab\E+$", "").is_match("abab"));
        assert!(re(&quote("ünï"), "i").is_match("ÜNÏcode"));
    }

    #[test]
    fn regex_options() {
        assert!(re("abc", "i").is_match("xABCx"));
        assert!(re("ABC", "i").is_match("abc"));
        assert!(!re("abc", "").is_match("ABC"));
        assert!(re("straße", "i").is_match("STRAßE"));
        assert!(re("ÉTÉ", "i").is_match("été"));
        assert!(re("[a-c]+$", "i").is_match("xxBCA"));
        assert!(
            !re("[^a-c]", "i").is_match("ABC"),
            "negated classes fold too"
        );
        assert!(re("^b", "m").is_match("a\nb"));
        assert!(!re("^b", "").is_match("a\nb"));
        assert!(re("a$", "m").is_match("a\nb"));
        assert!(!re("a$", "").is_match("a\nb"));
        assert!(
            re("a$", "").is_match("a\n"),
            "PCRE: $ before a final newline"
        );
        assert!(!re("a$", "").is_match("a\n\n"));
        assert!(!re("a.b", "").is_match("a\nb"));
        assert!(re("a.b", "s").is_match("a\nb"));
        assert!(re("A.B", "ims").is_match("x\na\nb"));
        assert!(matches!(
            err(r#"{"name":{"$regex":"a","$options":"x"}}"#),
            QueryError::BadOperand { op, .. } if op == "$options"
        ));
    }

    #[test]
    fn regex_classes_and_quantifiers() {
        let cases: &[(&str, &str, bool)] = &[
            ("[abc]", "xbx", true),
            ("[abc]", "xyz", false),
            ("^[a-z]+$", "hello", true),
            ("^[a-z]+$", "hello!", false),
            ("^[^0-9]*$", "no digits", true),
            ("^[^0-9]*$", "d1git", false),
            ("[]a]", "]", true),
            ("[^]a]", "]", false),
            ("[a-]", "-", true),
            ("[-a]", "-", true),
            (r"[\]]", "]", true),
            (r"[\\]", "\\", true),
            (r"[\d.]+x", "3.14x", true),
            (r"[\d-z]", "-", true),
            (r"^\d+$", "2024", true),
            (r"^\d+$", "20a4", false),
            (r"\D", "123", false),
            (r"^\w+$", "snake_case9", true),
            (r"\W", "snake_case9", false),
            (r"\s", "a b", true),
            (r"\S", " \t\n", false),
            (r"a\tb", "a\tb", true),
            (r"a\nb", "a\nb", true),
            (r"\.", "a", false),
            (r"\.", ".", true),
            (r"\/", "a/b", true),
            (r"\-", "-", true),
            ("ab*c", "ac", true),
            ("ab*c", "abbbc", true),
            ("ab+c", "ac", false),
            ("ab+c", "abbc", true),
            ("ab?c", "abc", true),
            ("ab?c", "abbc", false),
            ("^a*$", "", true),
            ("^a+$", "", false),
            ("colou?r", "color", true),
            ("^.*$", "anything", true),
            ("^.+$", "", false),
            ("a.+?z", "a to z", true),
            ("a*?b", "aab", true),
            ("a??b", "b", true),
            ("", "", true),
            ("", "abc", true),
            ("^$", "", true),
            ("^$", "x", false),
            ("x{", "x{", true),
            ("{a}", "{a}", true),
            ("a{,}", "a{,}", true),
            ("日本", "こんにちは日本語", true),
            ("^.本", "日本", true),
            ("[α-ω]+", "λ", true),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                re(pattern, "").is_match(text),
                want,
                "{pattern:?} on {text:?}"
            );
        }
        // On an array column, any string element.
        let r = conv();
        assert!(hit(json!({"m": {"$regex": "^lee"}}), &r));
        assert!(!hit(json!({"m": {"$regex": "^zz"}}), &r));
        assert!(
            !hit(json!({"count": {"$regex": "3"}}), &r),
            "numbers are not strings"
        );
        assert!(!hit(json!({"missing": {"$regex": ""}}), &r));
    }

    #[test]
    fn regex_is_linear() {
        let text = "a".repeat(10_000);
        let pathological = re("a*a*a*a*a*a*b", "");
        let (found, steps) = pathological.run(&text);
        assert!(!found);
        let bound = 2 * pathological.prog.len() * (text.len() + 1);
        assert!(steps <= bound, "{steps} steps, bound {bound}");
        // The worst the size cap allows: 128 optional atoms then a mismatch, over 10,000 chars.
        let longest = format!("{}b", "a?".repeat(127));
        assert!(longest.len() <= MAX_REGEX_BYTES);
        let longest = re(&longest, "i");
        let (found, steps) = longest.run(&text);
        assert!(!found);
        assert!(steps <= 2 * longest.prog.len() * (text.len() + 1));
        let started = std::time::Instant::now();
        assert!(re(".*.*.*=.*", "").run(&"=".repeat(10_000)).0);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Groups (and so nested quantifiers) are refused outright.
        assert!(matches!(
            regex_err("(a*)*b"),
            QueryError::UnsupportedRegex { .. }
        ));
        // An anchored pattern stops as soon as no thread survives.
        let (found, steps) = re("^b", "").run(&text);
        assert!(!found && steps < 10, "{steps}");
    }

    /// Rows like the ones a hostile client can make: `n` groups with one 7,900-byte attribute.
    fn big_rows(n: usize, text: &str) -> Vec<Map<String, Value>> {
        (0..n)
            .map(|i| row(json!({"objectId": format!("c{i}"), "name": "n", "x": text})))
            .collect()
    }

    fn run_within(where_json: Value, rows: Vec<Map<String, Value>>, max: u64) -> (bool, u64) {
        let query = q(&where_json.to_string());
        let mut m = Meter::new(max);
        let answer = query.apply_within(rows, &mut m);
        match answer {
            Ok(_) => (true, m.spent()),
            Err(QueryError::TooMuchWork { max: said }) => {
                assert_eq!(said, max);
                (false, m.spent())
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_query_stops_once_it_has_spent_its_steps() {
        let text = "a".repeat(7_900);
        let evil = format!("{}b", "a*".repeat(127));
        let max = 4_000_000;
        // One row alone is about six million steps: refused within the row, at most one
        // character's worth of steps (two per instruction) past the budget.
        let (done, spent) = run_within(json!({"x": {"$regex": evil}}), big_rows(1000, &text), max);
        assert!(!done);
        assert!(spent <= max + 2 * 400, "{spent}");
        // As many regexes as fit one frame, in `$or`: the same budget.
        let branches: Vec<Value> = (0..19).map(|_| json!({"x": {"$regex": evil}})).collect();
        let (done, spent) = run_within(json!({"$or": branches}), big_rows(1000, &text), max);
        assert!(!done && spent <= max + 2 * 400, "{spent}");
        // A long `$in` list against long arrays is work too.
        let list: Vec<Value> = (0..1000).map(|i| json!(format!("v{i}"))).collect();
        let array: Vec<Value> = (0..2000).map(|_| json!("a")).collect();
        let rows: Vec<Map<String, Value>> = (0..1000)
            .map(|i| row(json!({"objectId": format!("c{i}"), "x": array})))
            .collect();
        let (done, _) = run_within(json!({"x": {"$in": list}}), rows, max);
        assert!(!done);
        // Nested `$and` of `$nin`s over the same: refused too.
        let nested = json!({"$and": [{"$and": [{"x": {"$nin": list}}, {"x": {"$nin": list}}]}]});
        let rows: Vec<Map<String, Value>> = (0..1000)
            .map(|i| row(json!({"objectId": format!("c{i}"), "x": array})))
            .collect();
        assert!(!run_within(nested, rows, max).0);
        // A sort by long object columns costs its keys' bytes: written out once, read by
        // about log2(rows) comparisons each (about 2.2 million steps here).
        let rows: Vec<Map<String, Value>> = (0..1000)
            .map(|i| row(json!({"objectId": format!("c{i}"), "o": {"t": text, "i": i}})))
            .collect();
        let sorted = Query::parse(Some("{}"), Some("o"), None, Some(10)).unwrap();
        let mut m = Meter::new(max / 2);
        assert!(matches!(
            sorted.apply_within(rows, &mut m),
            Err(QueryError::TooMuchWork { .. })
        ));
        // What clients ask every day is far below: a `contains` over 1000 names, and the
        // same over the long attribute of a few rows, sorted.
        let rows: Vec<Map<String, Value>> = (0..1000)
            .map(|i| row(json!({"objectId": format!("c{i}"), "name": format!("team {i} of the big launch")})))
            .collect();
        let (done, spent) = run_within(json!({"name": {"$regex": "launch"}}), rows, max);
        assert!(done && spent < max / 10, "{spent}");
        let query =
            Query::parse(Some(r#"{"x": {"$regex": "b"}}"#), Some("-name"), None, None).unwrap();
        let mut m = Meter::new(max);
        query.apply_within(big_rows(10, &text), &mut m).unwrap();
        assert!(m.spent() < max / 10, "{}", m.spent());
        // Without a budget the answer is the same as ever.
        assert!(q(r#"{"x": {"$regex": "^a+$"}}"#).matches(&big_rows(1, &text)[0]));
    }

    #[test]
    fn regex_unsupported_and_invalid() {
        #[rustfmt::skip]
        let patterns = [
            "(a)", "a)", "a|b", "(?=a)", "(?i)a", "a{2}", "a{2,}", "a{2,3}", "a{,3}", r"\1", r"\b",
            r"\B", r"\x41", r"\u0041", r"\p{L}", r"\A", r"\z", "a*+", "a++", "[[:alpha:]]",
            r"[\Qa\E]",
        ];
        for pattern in patterns {
            match regex_err(pattern) {
                QueryError::UnsupportedRegex { pattern: p, .. } => assert_eq!(p, pattern),
                other => panic!("{pattern:?}: {other:?}"),
            }
        }
        for pattern in [
            "*a", "+", "?", "a**", "^*", "$+", r"a\", "[abc", "[", "[]", "[^]", "[z-a]", r"[a-\d]",
        ] {
            assert!(
                matches!(regex_err(pattern), QueryError::InvalidRegex { .. }),
                "{pattern:?}: {:?}",
                Regex::new(pattern, "")
            );
        }
        let long = "a".repeat(MAX_REGEX_BYTES + 1);
        assert_eq!(
            regex_err(&long),
            QueryError::RegexTooLong {
                len: MAX_REGEX_BYTES + 1
            }
        );
        assert!(Regex::new(&"a".repeat(MAX_REGEX_BYTES), "").is_ok());
        // Bytes, not characters: 86 three-byte characters are 258 bytes.
        assert!(matches!(
            regex_err(&"日".repeat(86)),
            QueryError::RegexTooLong { len: 258 }
        ));
        // Through parse, the error names the pattern.
        let e = err(r#"{"name":{"$regex":"(a|b)"}}"#);
        assert!(e.to_string().contains("(a|b)"), "{e}");
    }

    /// A backtracking matcher over the same pieces, for comparing with the NFA on small inputs.
    fn reference(
        pieces: &[Piece],
        text: &[char],
        icase: bool,
        multiline: bool,
        dotall: bool,
    ) -> bool {
        fn atom_ok(atom: &Atom, c: char, icase: bool, dotall: bool) -> bool {
            match atom {
                Atom::Char(p) if icase => fold(*p) == fold(c),
                Atom::Char(p) => *p == c,
                Atom::Any => dotall || c != '\n',
                Atom::Class(class) => class.matches(c, icase),
                Atom::LineStart | Atom::LineEnd => false,
            }
        }
        fn here(p: &[Piece], t: &[char], pos: usize, f: (bool, bool, bool)) -> bool {
            let (icase, multiline, dotall) = f;
            let Some((first, rest)) = p.split_first() else {
                return true;
            };
            match first.atom {
                Atom::LineStart => {
                    return (pos == 0 || (multiline && t[pos - 1] == '\n'))
                        && here(rest, t, pos, f);
                }
                Atom::LineEnd => {
                    let end =
                        pos == t.len() || (t[pos] == '\n' && (multiline || pos + 1 == t.len()));
                    return end && here(rest, t, pos, f);
                }
                _ => {}
            }
            let (min, max) = match first.quant {
                Quant::One => (1, 1),
                Quant::Star => (0, usize::MAX),
                Quant::Plus => (1, usize::MAX),
                Quant::Opt => (0, 1),
            };
            let mut k = 0;
            loop {
                if k >= min && here(rest, t, pos + k, f) {
                    return true;
                }
                if k == max
                    || pos + k >= t.len()
                    || !atom_ok(&first.atom, t[pos + k], icase, dotall)
                {
                    return false;
                }
                k += 1;
            }
        }
        (0..=text.len()).any(|start| here(pieces, text, start, (icase, multiline, dotall)))
    }

    #[test]
    fn regex_agrees_with_a_backtracking_reference() {
        let tokens = [
            "a", "b", "A", ".", "^", "$", "*", "+", "?", "[ab]", "[^a]", "[a-b]", r"\n", r"\d",
            r"\Qa.\E", "\n", "1", "*?",
        ];
        let alphabet = ['a', 'b', 'A', 'B', '\n', '.', '1'];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        for _ in 0..3000 {
            let pattern: String = (0..rng.below(6) + 1)
                .map(|_| tokens[rng.below(tokens.len())])
                .collect();
            let Ok(pieces) = parse_regex(&pattern) else {
                continue;
            };
            for options in ["", "i", "m", "s", "ims"] {
                let regex = re(&pattern, options);
                for _ in 0..8 {
                    let text: Vec<char> = (0..rng.below(7))
                        .map(|_| alphabet[rng.below(alphabet.len())])
                        .collect();
                    let s: String = text.iter().collect();
                    let want =
                        reference(&pieces, &text, regex.icase, regex.multiline, regex.dotall);
                    assert_eq!(regex.is_match(&s), want, "{pattern:?} /{options} on {s:?}");
                    compared += 1;
                }
            }
        }
        assert!(compared > 50_000, "{compared}");
    }

    // -- sort, skip, limit, flag ----------------------------------------------------------------

    fn ids(rows: &[Map<String, Value>]) -> Vec<&str> {
        rows.iter()
            .map(|r| r["objectId"].as_str().unwrap())
            .collect()
    }

    fn rows(list: Value) -> Vec<Map<String, Value>> {
        list.as_array().unwrap().iter().cloned().map(row).collect()
    }

    fn run(
        sort: &str,
        skip: Option<i32>,
        limit: Option<i32>,
        list: Value,
    ) -> Vec<Map<String, Value>> {
        Query::parse(None, Some(sort), skip, limit)
            .unwrap()
            .apply(rows(list))
    }

    #[test]
    fn sort_numbers_strings_dates_missing() {
        let list = json!([
            {"objectId": "1", "n": 10, "s": "b"},
            {"objectId": "2", "n": 9.5, "s": "a"},
            {"objectId": "3", "s": "c"},
            {"objectId": "4", "n": 100, "s": "B"},
            {"objectId": "5", "n": null, "s": "é"}
        ]);
        assert_eq!(
            ids(&run("n", None, None, list.clone())),
            ["3", "5", "2", "1", "4"]
        );
        assert_eq!(
            ids(&run("-n", None, None, list.clone())),
            ["4", "1", "2", "3", "5"]
        );
        assert_eq!(
            ids(&run("s", None, None, list.clone())),
            ["4", "2", "1", "3", "5"]
        );
        assert_eq!(
            ids(&run(" -s ", None, None, list.clone())),
            ["5", "3", "1", "2", "4"]
        );
        assert_eq!(
            ids(&run("", None, None, list)),
            ["1", "2", "3", "4", "5"],
            "input order"
        );

        let dated = json!([
            {"objectId": "a", "createdAt": "2024-05-01T10:00:00.000Z"},
            {"objectId": "b", "createdAt": {"__type": "Date", "iso": "2024-05-01T09:00:00Z"}},
            {"objectId": "c", "createdAt": "2024-05-01T11:30:00+02:00"},
            {"objectId": "d"},
            {"objectId": "e", "createdAt": "2024-04-30T23:59:59.999999Z"}
        ]);
        assert_eq!(
            ids(&run("createdAt", None, None, dated.clone())),
            ["d", "e", "b", "c", "a"]
        );
        assert_eq!(
            ids(&run("-createdAt", None, None, dated)),
            ["a", "c", "b", "e", "d"]
        );
    }

    #[test]
    fn sort_mixed_types_multiple_keys_and_ties() {
        let list = json!([
            {"objectId": "t", "v": true},
            {"objectId": "o", "v": {"k": 1}},
            {"objectId": "s", "v": "str"},
            {"objectId": "a", "v": [1]},
            {"objectId": "d", "v": {"__type": "Date", "iso": "2000-01-01T00:00:00Z"}},
            {"objectId": "n", "v": 5},
            {"objectId": "m"},
            {"objectId": "f", "v": false}
        ]);
        assert_eq!(
            ids(&run("v", None, None, list)),
            ["m", "n", "s", "o", "a", "f", "t", "d"]
        );

        let list = json!([
            {"objectId": "1", "g": 1, "h": "x"},
            {"objectId": "2", "g": 2, "h": "x"},
            {"objectId": "3", "g": 1, "h": "y"},
            {"objectId": "4", "g": 2, "h": "x"},
            {"objectId": "5", "g": 1, "h": "x"}
        ]);
        assert_eq!(
            ids(&run("g,-h", None, None, list.clone())),
            ["3", "1", "5", "2", "4"]
        );
        assert_eq!(
            ids(&run("-g,h", None, None, list.clone())),
            ["2", "4", "1", "5", "3"]
        );
        assert_eq!(
            ids(&run("h", None, None, list.clone())),
            ["1", "2", "4", "5", "3"],
            "stable"
        );
        assert_eq!(
            ids(&run("h,,", None, None, list)),
            ["1", "2", "4", "5", "3"]
        );
        assert!(matches!(
            Query::parse(None, Some("a,-"), None, None),
            Err(QueryError::BadSort(_))
        ));
        assert!(matches!(
            Query::parse(None, Some("--a"), None, None),
            Err(QueryError::BadSort(_))
        ));
    }

    #[test]
    fn skip_and_limit() {
        let many: Vec<Value> = (0..1500)
            .map(|i| json!({"objectId": i.to_string(), "i": i}))
            .collect();
        let many = Value::Array(many);
        let default = run("", None, None, many.clone());
        assert_eq!(default.len(), DEFAULT_LIMIT);
        assert_eq!(run("", None, Some(5000), many.clone()).len(), MAX_LIMIT);
        assert_eq!(run("", None, Some(0), many.clone()).len(), 0);
        let page = run("-i", Some(10), Some(3), many.clone());
        assert_eq!(ids(&page), ["1489", "1488", "1487"]);
        let page = run("", Some(1), Some(2), many.clone());
        assert_eq!(ids(&page), ["1", "2"]);
        assert_eq!(run("", Some(1499), Some(10), many.clone()).len(), 1);
        assert_eq!(run("i", Some(2000), None, many).len(), 0);
        // As the SDK's test: one conversation, skip(1) gives nothing.
        let one = Query::parse(Some(r#"{"objectId":"c1"}"#), None, Some(1), None).unwrap();
        assert!(one.apply(vec![row(conv())]).is_empty());
        assert_eq!(
            Query::parse(None, None, Some(-1), None).unwrap_err(),
            QueryError::NegativeSkip(-1)
        );
        assert_eq!(
            Query::parse(None, None, None, Some(-5)).unwrap_err(),
            QueryError::NegativeLimit(-5)
        );
        let q = Query::parse(None, None, Some(3), Some(20)).unwrap();
        assert_eq!((q.skip(), q.limit()), (3, 20));
    }

    #[test]
    fn filter_then_sort_then_page() {
        let list = json!([
            {"objectId": "1", "m": ["a", "b"], "lm": "2024-01-03T00:00:00Z"},
            {"objectId": "2", "m": ["b"], "lm": "2024-01-05T00:00:00Z"},
            {"objectId": "3", "m": ["a"], "lm": {"__type": "Date", "iso": "2024-01-04T00:00:00Z"}},
            {"objectId": "4", "m": ["a", "c"]},
            {"objectId": "5", "m": ["a"], "lm": "2024-01-01T00:00:00Z"}
        ]);
        let q = Query::parse(Some(r#"{"m":"a"}"#), Some("-lm"), Some(1), Some(2)).unwrap();
        assert_eq!(ids(&q.apply(rows(list))), ["1", "5"]);
    }

    #[test]
    fn compact_drops_members_after_matching() {
        let q = Query::parse(Some(r#"{"m":"hjiang"}"#), None, None, None)
            .unwrap()
            .with_flag(Some(FLAG_COMPACT));
        assert!(q.compact() && !q.refresh_last_message());
        let out = q.apply(vec![row(conv())]);
        assert_eq!(out.len(), 1);
        assert!(!out[0].contains_key("m"));
        assert_eq!(out[0]["objectId"], "c1");
        let q = q.with_flag(Some(3));
        assert!(q.compact() && q.refresh_last_message());
        let q = q.with_flag(None);
        assert!(!q.compact());
        assert!(q.apply(vec![row(conv())])[0].contains_key("m"));
    }

    // -- index hints ----------------------------------------------------------------------------

    #[test]
    fn object_ids_pinned_by_the_condition() {
        let ids = |w: &str| q(w).object_ids();
        let some = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(ids(r#"{"objectId":"c1"}"#), some(&["c1"]));
        assert_eq!(ids(r#"{"objectId":"c1","m":"x"}"#), some(&["c1"]));
        assert_eq!(
            ids(r#"{"objectId":{"$in":["a","b","a",3]}}"#),
            some(&["a", "b"])
        );
        assert_eq!(ids(r#"{"objectId":{"$in":[]}}"#), some(&[]));
        assert_eq!(
            ids(r#"{"objectId":{"$in":["a","b"],"$ne":"a"}}"#),
            some(&["a", "b"])
        );
        assert_eq!(
            ids(r#"{"$and":[{"objectId":{"$in":["a","b","c"]}},{"objectId":{"$in":["c","b"]}}]}"#),
            some(&["b", "c"])
        );
        assert_eq!(
            ids(r#"{"objectId":"a","$and":[{"objectId":{"$in":["b"]}}]}"#),
            some(&[])
        );
        assert_eq!(
            ids(r#"{"$or":[{"objectId":"a"},{"objectId":{"$in":["b","a"]}}]}"#),
            some(&["a", "b"])
        );
        assert_eq!(ids(r#"{"$or":[{"objectId":"a"},{"name":"b"}]}"#), None);
        assert_eq!(ids(r#"{"objectId":{"$ne":"0"}}"#), None);
        assert_eq!(ids(r#"{"objectId":7}"#), None);
        assert_eq!(ids(r#"{"name":"x"}"#), None);
        assert_eq!(ids("{}"), None);
        assert_eq!(
            Query::parse(None, None, None, None).unwrap().object_ids(),
            None
        );
    }

    #[test]
    fn required_members_of_the_condition() {
        // Sorted: which comes first depends on the order keys are visited in.
        let req = |w: &str| {
            q(w).required_members().map(|mut v| {
                v.sort();
                v
            })
        };
        let some = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(req(r#"{"m":"a"}"#), some(&["a"]));
        assert_eq!(req(r#"{"m":["a","b"]}"#), some(&["a", "b"]));
        assert_eq!(
            req(r#"{"m":{"$all":["a","b"],"$size":2}}"#),
            some(&["a", "b"])
        );
        assert_eq!(req(r#"{"m":{"$in":["a"]}}"#), some(&["a"]));
        assert_eq!(req(r#"{"m":{"$in":["a","b"]}}"#), None);
        assert_eq!(req(r#"{"m":{"$all":[]}}"#), None);
        assert_eq!(req(r#"{"m":{"$ne":"a"}}"#), None);
        assert_eq!(
            req(r#"{"m":"a","$and":[{"m":{"$all":["b","a"]}}]}"#),
            some(&["a", "b"])
        );
        assert_eq!(
            req(r#"{"$or":[{"m":{"$all":["a","b"]}},{"m":"b"}]}"#),
            some(&["b"])
        );
        assert_eq!(req(r#"{"$or":[{"m":"a"},{"name":"x"}]}"#), None);
        assert_eq!(req(r#"{"c":"a"}"#), None);
    }

    #[test]
    fn columns_required_true() {
        let t = |w: &str| q(w).requires_true("tr");
        assert!(t(r#"{"tr":true}"#));
        assert!(t(r#"{"tr":true,"name":"x"}"#));
        assert!(t(r#"{"$and":[{"name":"x"},{"tr":true}]}"#));
        assert!(t(r#"{"$or":[{"tr":true},{"tr":true,"name":"y"}]}"#));
        assert!(!t(r#"{"$or":[{"tr":true},{"name":"y"}]}"#));
        assert!(!t(r#"{"tr":false}"#));
        assert!(!t(r#"{"tr":{"$ne":false}}"#));
        assert!(!t(r#"{"sys":true}"#));
        assert!(!t("{}"));
    }

    // -- errors ---------------------------------------------------------------------------------

    #[test]
    fn typed_errors() {
        assert!(matches!(err("{"), QueryError::BadJson(_)));
        assert!(matches!(err("{'a':1}"), QueryError::BadJson(_)));
        assert!(matches!(
            err(&format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            QueryError::BadJson(_)
        ));
        assert_eq!(err("[]"), QueryError::NotAnObject("an array"));
        assert_eq!(err("null"), QueryError::NotAnObject("null"));
        assert_eq!(err("3"), QueryError::NotAnObject("a number"));
        assert_eq!(err(r#""x""#), QueryError::NotAnObject("a string"));
        assert_eq!(
            err(r#"{"$nor":[{}]}"#),
            QueryError::UnknownOperator("$nor".into())
        );
        assert_eq!(
            err(r#"{"a":{"$eq":1}}"#),
            QueryError::UnknownOperator("$eq".into())
        );
        assert_eq!(
            err(r#"{"a":{"$elemMatch":{}}}"#),
            QueryError::UnknownOperator("$elemMatch".into())
        );
        assert_eq!(
            err(r#"{"a":{"$gt":1,"b":2}}"#),
            QueryError::MixedCondition {
                field: "a".into(),
                key: "b".into()
            }
        );
        let bad_op = |w: &str| match err(w) {
            QueryError::BadOperand { op, .. } => op,
            other => panic!("{w}: {other:?}"),
        };
        assert_eq!(bad_op(r#"{"$or":[]}"#), "$or");
        assert_eq!(bad_op(r#"{"$or":{}}"#), "$or");
        assert_eq!(bad_op(r#"{"$and":[1]}"#), "$and");
        assert_eq!(bad_op(r#"{"a":{"$in":"x"}}"#), "$in");
        assert_eq!(bad_op(r#"{"a":{"$nin":{}}}"#), "$nin");
        assert_eq!(bad_op(r#"{"a":{"$all":null}}"#), "$all");
        assert_eq!(bad_op(r#"{"a":{"$size":-1}}"#), "$size");
        assert_eq!(bad_op(r#"{"a":{"$size":1.5}}"#), "$size");
        assert_eq!(bad_op(r#"{"a":{"$exists":1}}"#), "$exists");
        assert_eq!(bad_op(r#"{"a":{"$lt":true}}"#), "$lt");
        assert_eq!(bad_op(r#"{"a":{"$gte":[1]}}"#), "$gte");
        assert_eq!(
            bad_op(r#"{"a":{"$gt":{"__type":"Date","iso":"soon"}}}"#),
            "$gt"
        );
        assert_eq!(bad_op(r#"{"a":{"$lte":{"__type":"Pointer"}}}"#), "$lte");
        assert_eq!(bad_op(r#"{"a":{"$regex":5}}"#), "$regex");
        assert_eq!(bad_op(r#"{"a":{"$options":"i"}}"#), "$options");
        assert_eq!(bad_op(r#"{"a":{"$regex":"x","$options":1}}"#), "$options");
        // Errors inside nested branches surface too.
        assert_eq!(
            err(r#"{"$or":[{"a":1},{"$and":[{"b":{"$near":1}}]}]}"#),
            QueryError::UnknownOperator("$near".into())
        );
        // A blank where is no condition.
        assert!(
            Query::parse(Some("  "), None, None, None)
                .unwrap()
                .matches(&row(conv()))
        );
        // Messages are readable.
        assert_eq!(
            err("[]").to_string(),
            "where must be a JSON object, not an array"
        );
    }

    #[test]
    fn iso_times() {
        let t = |s: &str| parse_iso(s);
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("1970-01-01"), Some(0));
        assert_eq!(t("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(t("1970-01-01T00:00:00.123456789123Z"), Some(123_456_789));
        assert_eq!(t("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(t("1970-01-01T01:00:00+0100"), Some(0));
        assert_eq!(t("1970-01-01T01:00:00+01"), Some(0));
        assert_eq!(t("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(t("1970-01-01 00:00"), Some(0));
        assert_eq!(t("2000-03-01T00:00:00Z"), Some(951_868_800 * 1_000_000_000));
        assert_eq!(
            t("2024-02-29T00:00:00Z"),
            Some(1_709_164_800 * 1_000_000_000)
        );
        assert_eq!(
            t("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800 * 1_000_000_000)
        );
        #[rustfmt::skip]
        let bads = [
            "", "2024", "2024-1-01", "2024-13-01", "2023-02-29", "2024-04-31", "2024-01-00",
            "2024-01-01T", "2024-01-01T24:00", "2024-01-01T10:60", "2024-01-01T10:00:61",
            "2024-01-01T10:00:00.", "2024-01-01T10:00:00ZZ", "2024-01-01T10:00:00+1",
            "2024-01-01T10:00:00+01:", "2024-01-01T10:00:00+24:00", "2024-01-01x", "２０２４-01-01",
            "2024-01-01T10:00:00 Z",
        ];
        for bad in bads {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    // -- robustness -----------------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn fixture_rows() -> Vec<Map<String, Value>> {
        rows(json!([
            conv(),
            {"objectId": "c2", "m": [], "name": "", "count": -1, "attr": [1, {"x": null}]},
            {"objectId": "c3", "m": ["a", 1, null, ["b"]], "createdAt": 5, "lm": "not a date"},
            {"objectId": 4, "name": ["x", "y"], "count": 1e300, "attr": "s"},
            {}
        ]))
    }

    /// Sort keys of the output must be in order, and every row answered must match.
    fn check(q: &Query, input: &[Map<String, Value>]) {
        let out = q.apply(input.to_vec());
        assert!(out.len() <= q.limit());
        if !q.compact() {
            assert!(out.iter().all(|r| q.matches(r)));
        }
        let keys: Vec<Vec<SortValue<'_>>> = out
            .iter()
            .map(|r| q.sort.iter().map(|k| k.value(r)).collect())
            .collect();
        for pair in keys.windows(2) {
            assert_ne!(
                compare_sort_keys(&q.sort, &pair[0], &pair[1]),
                Ordering::Greater
            );
        }
        let _ = (q.object_ids(), q.required_members());
    }

    #[test]
    fn garbage_never_panics() {
        #[rustfmt::skip]
        let pieces = [
            "{", "}", "[", "]", "\"", ":", ",", "$", "\\", ".", "*", "+", "?", "^", "(", ")", "|",
            "a", "m", "0", "-1", "1e999", "null", "true", "\"$in\"", "\"$regex\"", "\"$and\"",
            "\"$or\"", "\"$options\"", "\"__type\"", "\"Date\"", "\"iso\"", "\"m\"", "é", "\u{0}",
            " ", "\"a.b\"", "\"\\Q\"", "\"\\E\"", "{}", "[]", "\"2024-01-01T00:00:00Z\"",
        ];
        #[rustfmt::skip]
        let sorts = [
            "", "a", "-a", "a,-b", "-", ",,", "createdAt,-lm", "m.0", "- x", "a,--b",
        ];
        let input = fixture_rows();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..5000 {
            let text: String = (0..rng.below(24))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect();
            let skip = [None, Some(0), Some(1), Some(-3), Some(i32::MAX)][rng.below(5)];
            let limit = [None, Some(0), Some(2), Some(-1), Some(i32::MAX)][rng.below(5)];
            let sort = sorts[rng.below(sorts.len())];
            if let Ok(q) = Query::parse(Some(&text), Some(sort), skip, limit) {
                check(&q.with_flag(Some(rng.next() as i32)), &input);
            }
        }
    }

    fn random_value(rng: &mut XorShift, depth: usize) -> Value {
        let ops = [
            "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$all", "$size", "$exists",
            "$regex", "$options", "$bogus",
        ];
        #[rustfmt::skip]
        let keys = [
            "objectId", "m", "name", "count", "createdAt", "lm", "attr.x", "attr", "m.0", "c",
            "$and", "$or", "missing",
        ];
        let regex_bits = [
            "a", ".", "*", "+", "?", "^", "$", "[a-z]", "[^", "\\Q", "\\E", "\\d", "(", "|", "{2}",
            "\\", "é", "J",
        ];
        match rng.below(if depth > 3 { 7 } else { 10 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => json!(rng.below(7) as i64 - 3),
            3 => json!(rng.below(100) as f64 / 7.0),
            4 => json!(["hjiang", "c1", "a", "", "js", "2024-05-01T10:00:00Z"][rng.below(6)]),
            5 => date(
                [
                    "2024-05-01T10:00:00Z",
                    "1970-01-01",
                    "bad",
                    "2030-01-01T00:00:00+08:00",
                ][rng.below(4)],
            ),
            6 => {
                let s: String = (0..rng.below(8))
                    .map(|_| regex_bits[rng.below(regex_bits.len())])
                    .collect();
                Value::String(s)
            }
            7 => Value::Array(
                (0..rng.below(4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            8 => {
                let mut o = Map::new();
                for _ in 0..rng.below(3) + 1 {
                    o.insert(
                        ops[rng.below(ops.len())].to_owned(),
                        random_value(rng, depth + 1),
                    );
                }
                Value::Object(o)
            }
            _ => {
                let mut o = Map::new();
                for _ in 0..rng.below(3) + 1 {
                    o.insert(
                        keys[rng.below(keys.len())].to_owned(),
                        random_value(rng, depth + 1),
                    );
                }
                Value::Object(o)
            }
        }
    }

    #[test]
    fn random_structured_queries_never_panic() {
        let input = fixture_rows();
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        let mut accepted = 0;
        for _ in 0..5000 {
            let mut w = Map::new();
            for _ in 0..rng.below(3) + 1 {
                #[rustfmt::skip]
                let keys = [
                    "objectId", "m", "name", "count", "createdAt", "lm", "attr.x", "$and", "$or",
                ];
                let key = keys[rng.below(keys.len())];
                w.insert(key.to_owned(), random_value(&mut rng, 0));
            }
            let text = Value::Object(w).to_string();
            let sort = ["-lm", "name,-count", "createdAt", "attr", "m"][rng.below(5)];
            if let Ok(q) = Query::parse(Some(&text), Some(sort), Some(rng.below(3) as i32), None) {
                accepted += 1;
                check(&q, &input);
            }
        }
        assert!(accepted > 500, "only {accepted} random queries parsed");
    }

    #[test]
    fn random_patterns_never_panic_and_stay_linear() {
        let bits = [
            "a", "b", ".", "*", "+", "?", "^", "$", "[", "]", "-", "\\", "Q", "E", "d", "{", "}",
            ",", "1", "é", "\n", "(", "|", "[:",
        ];
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let text = "ab.-é\n1{}".repeat(50);
        for _ in 0..5000 {
            let pattern: String = (0..rng.below(16))
                .map(|_| bits[rng.below(bits.len())])
                .collect();
            let options = ["", "i", "m", "s", "ims", "q"][rng.below(6)];
            if let Ok(regex) = Regex::new(&pattern, options) {
                let (_, steps) = regex.run(&text);
                assert!(
                    steps <= 2 * regex.prog.len() * (text.chars().count() + 1),
                    "{pattern:?}"
                );
            }
        }
    }
}
