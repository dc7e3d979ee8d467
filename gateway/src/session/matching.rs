//! Plate matching at a gated exit (SPEC §3): which open session of the lot does the plate an exit
//! camera read belong to?
//!
//! An exact match wins outright. Otherwise every open session's plate is scored with a weighted
//! edit distance that knows how ANPR engines misread plates: substituting one character of a
//! confusion group (`0/O/D/Q`, `1/I/7`, `8/B`, `5/S`, `2/Z`, `6/G`) costs [`CONFUSION_COST`], a
//! province character read as a look-alike province costs [`PROVINCE_CONFUSION_COST`], any other
//! province-for-province swap costs [`PROVINCE_COST`], and every other substitution, a dropped or
//! doubled character, or two adjacent characters swapped costs one [`EDIT_COST`]. Costs are whole
//! tenths of an edit, so the distance is exact; the score is `1 − cost / (EDIT_COST × longer length)`.
//!
//! Plates arrive normalised (upper case, no separators) and are compared as `char`s, never bytes.
//! The module is pure and allocates once per call, not per candidate: a scan of a lot's ~2,000
//! open sessions sits on the barrier's hot path.

use std::mem;

/// The cost of one ordinary edit: an arbitrary substitution, an insertion, a deletion or an
/// adjacent transposition. Every cost is in tenths of an edit.
pub const EDIT_COST: u32 = 10;
/// Substituting a character for another of its ANPR confusion group (`0` for `O`, `8` for `B` …).
pub const CONFUSION_COST: u32 = 2;
/// Substituting a province character for a look-alike (see [`PROVINCE_CONFUSIONS`]).
pub const PROVINCE_CONFUSION_COST: u32 = 3;
/// Substituting any other province character for a province character: the classifier of the
/// first character chooses among 31 provinces only, so its mistakes stay within them.
pub const PROVINCE_COST: u32 = 6;

/// Below this score a fuzzy candidate is no match at all. One confusion in a 7–8 character plate
/// scores about 0.97, one arbitrary wrong, dropped or doubled character about 0.86 (still a match,
/// which the caller sends to review), two arbitrary errors 0.71–0.75 (no match). Plates of five
/// characters or more survive one arbitrary error; only ten-character plates survive two.
pub const MIN_SCORE: f64 = 0.8;

/// A runner-up whose score is within this margin of the best makes the match ambiguous; see
/// [`best_match`] for how the score is lowered.
pub const AMBIGUITY_MARGIN: f64 = 0.05;

/// The provinces' abbreviations that open a Chinese plate: the protocol's list without 使 and 领,
/// which mark embassy and consulate cars rather than provinces.
const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

/// Province characters that look alike in a small, blurred crop: 琼 contains 京; 京/宁 share a
/// dotted cap over a thin stem; 津/沪 and 浙/湘 share the water radical and a compact right side;
/// 新/浙 both end in 斤; 晋/青/贵 stack horizontal strokes over 日/月/贝; 蒙/藏 put 艹 over a dense
/// body. A judgement of glyph shape, to be tuned from what the review queue corrects.
pub const PROVINCE_CONFUSIONS: [(char, char); 9] = [
    ('京', '琼'),
    ('京', '宁'),
    ('津', '沪'),
    ('浙', '湘'),
    ('新', '浙'),
    ('晋', '青'),
    ('青', '贵'),
    ('晋', '贵'),
    ('蒙', '藏'),
];

/// Slack for comparing scores computed from exact costs, so that a score landing on a threshold
/// counts as reaching it despite rounding.
const SCORE_TOLERANCE: f64 = 1e-9;

/// How a candidate matched the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The candidate is the read plate itself.
    Exact,
    /// The candidate is the likeliest plate the read is a misread of.
    Fuzzy,
}

/// The candidate a read belongs to, with the confidence in 0..=1 (1.0 only for an exact match).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateMatch<K> {
    pub key: K,
    pub score: f64,
    pub kind: MatchKind,
}

/// Scores how likely `read` is a misread of `candidate` (1.0 identical, 0.0 unrelated).
///
/// Symmetric in its arguments, in 0..=1, and 1.0 only for equal plates.
pub fn similarity(read: &str, candidate: &str) -> f64 {
    EditDistance::new(read)
        .score_at_least(candidate, 0.0)
        .unwrap_or(0.0)
}

/// The best candidate for `read`: an exact match if there is one, else the best fuzzy match whose
/// score is at least [`MIN_SCORE`]; its score is lowered when a runner-up is nearly as good.
///
/// The first exact match returns at once with score 1.0 (two open sessions with one plate is the
/// session store's anomaly to resolve, not a misread). For a fuzzy match with best score `b` and
/// runner-up score `r`, a gap `b − r` below [`AMBIGUITY_MARGIN`] scales the score by
/// `0.5 + 0.5 × gap / AMBIGUITY_MARGIN`: a tie halves it (a coin toss between two sessions), a
/// gap at the margin leaves it alone, and the change is continuous in between. An ambiguous
/// match is still returned, possibly below [`MIN_SCORE`], so that the car leaves and review
/// decides. Of equally scored candidates the first wins.
pub fn best_match<'a, K: Copy>(
    read: &str,
    candidates: impl IntoIterator<Item = (K, &'a str)>,
) -> Option<PlateMatch<K>> {
    let mut distance = EditDistance::new(read);
    let mut best: Option<(K, f64)> = None;
    let mut runner_up = 0.0_f64;
    for (key, plate) in candidates {
        if plate == read {
            return Some(PlateMatch {
                key,
                score: 1.0,
                kind: MatchKind::Exact,
            });
        }
        // A candidate further than the margin below both MIN_SCORE and the best so far can be
        // neither the match nor a runner-up that makes it ambiguous.
        let floor =
            best.map_or(MIN_SCORE, |(_, best_score)| best_score.max(MIN_SCORE)) - AMBIGUITY_MARGIN;
        let Some(score) = distance.score_at_least(plate, floor) else {
            continue;
        };
        match best {
            Some((_, best_score)) if score <= best_score => runner_up = runner_up.max(score),
            _ => {
                if let Some((_, previous_best)) = best {
                    runner_up = runner_up.max(previous_best);
                }
                best = Some((key, score));
            }
        }
    }
    let (key, score) = best?;
    if score + SCORE_TOLERANCE < MIN_SCORE {
        return None;
    }
    Some(PlateMatch {
        key,
        score: lowered_for_ambiguity(score, runner_up),
        kind: MatchKind::Fuzzy,
    })
}

/// Applies the ambiguity rule documented on [`best_match`].
fn lowered_for_ambiguity(best: f64, runner_up: f64) -> f64 {
    let gap = best - runner_up;
    if gap >= AMBIGUITY_MARGIN {
        best
    } else {
        best * (0.5 + 0.5 * gap / AMBIGUITY_MARGIN)
    }
}

/// The number of character classes of [`class`].
const CLASSES: usize = 37;

/// The weighted optimal-string-alignment distance from one read to many candidates, with the
/// read's characters, its class counts and three rows of the dynamic programme kept between
/// candidates.
struct EditDistance {
    read: Vec<char>,
    read_classes: [u32; CLASSES],
    two_back: Vec<u32>,
    previous: Vec<u32>,
    current: Vec<u32>,
}

impl EditDistance {
    fn new(read: &str) -> Self {
        let read: Vec<char> = read.chars().collect();
        let mut read_classes = [0; CLASSES];
        for &c in &read {
            read_classes[class(c)] += 1;
        }
        let row = vec![0; read.len() + 1];
        Self {
            read,
            read_classes,
            two_back: row.clone(),
            previous: row.clone(),
            current: row,
        }
    }

    /// The similarity of `candidate`, or `None` as soon as it is certain to be below `floor`.
    fn score_at_least(&mut self, candidate: &str, floor: f64) -> Option<f64> {
        let (candidate_len, unmatched) = self.count_unmatched(candidate);
        let longer = self.read.len().max(candidate_len);
        if longer == 0 {
            return Some(1.0);
        }
        let most = f64::from(EDIT_COST) * longer as f64;
        // The most the cost may be for the score to reach `floor`. Costs are whole tenths: the
        // saturating `as` truncates like `floor`, and the tolerance keeps a cost landing on it.
        let budget = ((1.0 - floor) * most + SCORE_TOLERANCE) as u32;
        if edits(unmatched) > budget {
            return None;
        }
        let cost = self.cost(candidate, budget)?;
        Some(1.0 - f64::from(cost) / most)
    }

    /// The candidate's length in chars, and a lower bound on the number of full-cost edits,
    /// cheaper than the dynamic programme. Every edit that costs less than [`EDIT_COST`] keeps each
    /// character in its [`class`]; every other edit moves at most one character out of a class and
    /// at most one into another. So at least as many edits are needed as the read has characters
    /// without a same-class partner in the candidate, and as the candidate has without one in the
    /// read; the bound covers a difference in length too.
    fn count_unmatched(&self, candidate: &str) -> (usize, usize) {
        let mut unpaired = self.read_classes;
        let mut read_unpaired = self.read.len();
        let mut candidate_unpaired = 0;
        let mut candidate_len = 0;
        for c in candidate.chars() {
            // Branch-free: whether a character pairs up is unpredictable.
            let slot = &mut unpaired[class(c)];
            let paired = *slot > 0;
            *slot -= u32::from(paired);
            read_unpaired -= usize::from(paired);
            candidate_unpaired += usize::from(!paired);
            candidate_len += 1;
        }
        (candidate_len, read_unpaired.max(candidate_unpaired))
    }

    /// The cheapest way, in tenths of an edit, to turn `candidate` into the read, or `None` once
    /// it must exceed `budget`. Row `j` holds the costs of turning the first `j` candidate chars
    /// into each prefix of the read; a row's minimum never decreases from one row to the next (a
    /// transposition from row `j − 2` costs at least the diagonal cell of row `j − 1`), so the
    /// scan stops when it passes the budget.
    fn cost(&mut self, candidate: &str, budget: u32) -> Option<u32> {
        let read = &self.read;
        for (i, cell) in self.previous.iter_mut().enumerate() {
            *cell = edits(i);
        }
        let mut before: Option<char> = None;
        for (j, c) in candidate.chars().enumerate() {
            self.current[0] = edits(j + 1);
            let mut row_min = self.current[0];
            for i in 1..=read.len() {
                let r = read[i - 1];
                let mut best = (self.previous[i - 1] + substitution_cost(r, c))
                    .min(self.previous[i] + EDIT_COST)
                    .min(self.current[i - 1] + EDIT_COST);
                if i > 1 && before == Some(r) && read[i - 2] == c && r != c {
                    best = best.min(self.two_back[i - 2] + EDIT_COST);
                }
                self.current[i] = best;
                row_min = row_min.min(best);
            }
            if row_min > budget {
                return None;
            }
            mem::swap(&mut self.two_back, &mut self.previous);
            mem::swap(&mut self.previous, &mut self.current);
            before = Some(c);
        }
        Some(self.previous[read.len()]).filter(|&cost| cost <= budget)
    }
}

/// The cost of `n` ordinary edits.
fn edits(n: usize) -> u32 {
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .saturating_mul(EDIT_COST)
}

/// The cost of reading `a` where the plate has `b`; symmetric.
fn substitution_cost(a: char, b: char) -> u32 {
    if a == b {
        0
    } else if confusion_representative(a) == confusion_representative(b) {
        CONFUSION_COST
    } else if !(is_province(a) && is_province(b)) {
        EDIT_COST
    } else if PROVINCE_CONFUSIONS.contains(&(a, b)) || PROVINCE_CONFUSIONS.contains(&(b, a)) {
        PROVINCE_CONFUSION_COST
    } else {
        PROVINCE_COST
    }
}

fn is_province(c: char) -> bool {
    !c.is_ascii() && PROVINCES.contains(c)
}

/// The first character of `c`'s ANPR confusion group, or `c` itself outside the groups.
fn confusion_representative(c: char) -> char {
    match c {
        'O' | 'D' | 'Q' => '0',
        'I' | '7' => '1',
        'B' => '8',
        'S' => '5',
        'Z' => '2',
        'G' => '6',
        _ => c,
    }
}

/// The class of a character for [`EditDistance::count_unmatched`]: one per ASCII letter and digit
/// with each confusion group merged into its representative, and one for everything else (so
/// province swaps stay within it).
fn class(c: char) -> usize {
    let c = confusion_representative(c);
    match c {
        'A'..='Z' => usize::from(c as u8 - b'A'),
        '0'..='9' => 26 + usize::from(c as u8 - b'0'),
        _ => CLASSES - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scores within rounding of each other.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn only<'a>(plates: &[&'a str]) -> Vec<(usize, &'a str)> {
        plates.iter().copied().enumerate().collect()
    }

    #[test]
    fn exact_plate_wins_over_a_fuzzy_one() {
        let found = best_match("浙A12345", only(&["浙A1234S", "浙A12345"])).expect("a match");
        assert_eq!(
            found,
            PlateMatch {
                key: 1,
                score: 1.0,
                kind: MatchKind::Exact
            }
        );
    }

    #[test]
    fn first_of_duplicate_exact_plates_wins() {
        let found = best_match("浙A12345", only(&["浙A12345", "浙A12345"])).expect("a match");
        assert_eq!(
            (found.key, found.score, found.kind),
            (0, 1.0, MatchKind::Exact)
        );
    }

    const CONFUSION_PAIRS: [(char, char); 13] = [
        ('0', 'O'),
        ('0', 'D'),
        ('0', 'Q'),
        ('O', 'D'),
        ('O', 'Q'),
        ('D', 'Q'),
        ('1', 'I'),
        ('1', '7'),
        ('I', '7'),
        ('8', 'B'),
        ('5', 'S'),
        ('2', 'Z'),
        ('6', 'G'),
    ];

    #[test]
    fn every_confusion_pair_costs_little_in_both_directions() {
        for (a, b) in CONFUSION_PAIRS {
            assert_eq!(substitution_cost(a, b), CONFUSION_COST, "{a}/{b}");
            assert_eq!(substitution_cost(b, a), CONFUSION_COST, "{b}/{a}");
        }
        assert_eq!(substitution_cost('8', '3'), EDIT_COST);
        assert_eq!(substitution_cost('O', 'B'), EDIT_COST);
    }

    #[test]
    fn one_confused_character_still_matches() {
        for (a, b) in CONFUSION_PAIRS {
            for (read, plate) in [(a, b), (b, a)] {
                for template in ["浙A9{}3K4", "浙AD9{}3K4"] {
                    let read = template.replace("{}", &read.to_string());
                    let plate = template.replace("{}", &plate.to_string());
                    let others = ["京N55555", plate.as_str(), "苏E99999"];
                    let found = best_match(&read, only(&others)).expect("a match");
                    assert_eq!(
                        (found.key, found.kind),
                        (1, MatchKind::Fuzzy),
                        "{read}/{plate}"
                    );
                    assert!(found.score >= 0.95, "{read} for {plate}: {}", found.score);
                }
            }
        }
    }

    #[test]
    fn confused_province_characters_match_better_than_other_provinces() {
        for (a, b) in PROVINCE_CONFUSIONS {
            assert_eq!(substitution_cost(a, b), PROVINCE_CONFUSION_COST, "{a}/{b}");
            assert_eq!(substitution_cost(b, a), PROVINCE_CONFUSION_COST, "{b}/{a}");
        }
        assert_eq!(substitution_cost('京', '粤'), PROVINCE_COST);
        assert_eq!(substitution_cost('京', '学'), EDIT_COST);
        assert_eq!(substitution_cost('京', 'A'), EDIT_COST);
        assert!(close(similarity("琼A12345", "京A12345"), 1.0 - 3.0 / 70.0));
        assert!(close(similarity("粤A12345", "京A12345"), 1.0 - 6.0 / 70.0));
        let found = best_match("京B12345", only(&["沪E99999", "琼B12345"])).expect("a match");
        assert_eq!((found.key, found.kind), (1, MatchKind::Fuzzy));
        assert!(found.score > 0.95);
    }

    #[test]
    fn one_arbitrary_wrong_character_matches_below_review_level() {
        let found = best_match("浙A12345", only(&["浙A12945"])).expect("a match");
        assert!(close(found.score, 1.0 - 1.0 / 7.0), "{}", found.score);
        assert!(found.score > MIN_SCORE && found.score < 0.9);
    }

    #[test]
    fn a_dropped_or_doubled_character_still_matches() {
        for (read, plate) in [("浙A1245", "浙A12345"), ("浙A123345", "浙A12345")] {
            let found = best_match(read, only(&[plate])).expect("a match");
            assert_eq!(found.kind, MatchKind::Fuzzy);
            assert!(found.score >= 0.85, "{read}: {}", found.score);
        }
    }

    #[test]
    fn swapped_neighbours_cost_one_edit() {
        assert!(close(similarity("浙A12354", "浙A12345"), 1.0 - 1.0 / 7.0));
    }

    #[test]
    fn two_wrong_characters_are_no_match() {
        assert_eq!(best_match("浙A12345", only(&["浙A19945"])), None);
        assert_eq!(best_match("浙AD12345", only(&["浙AD19945"])), None);
        assert_eq!(best_match("浙A12345", only(&["浙A345"])), None);
    }

    #[test]
    fn ambiguity_lowers_the_score() {
        // Both candidates are one confusion away: a tie halves the score.
        let tie = best_match("浙A12345", only(&["浙A1234S", "浙AI2345"])).expect("a match");
        assert_eq!(tie.key, 0);
        assert!(close(tie.score, (1.0 - 2.0 / 70.0) / 2.0), "{}", tie.score);

        // A look-alike province against any other province: nearly as good, lowered below 0.9.
        // The order the candidates come in does not matter.
        let near = best_match("京A12345", only(&["粤A12345", "琼A12345"])).expect("a match");
        assert_eq!(near.key, 1);
        assert!(near.score < 0.9 && near.score < similarity("京A12345", "琼A12345"));
        let reversed = best_match("京A12345", only(&["琼A12345", "粤A12345"])).expect("a match");
        assert_eq!((reversed.key, reversed.score), (0, near.score));

        // A confusion against an arbitrary error is a clear winner, left alone.
        let clear = best_match("浙A12345", only(&["浙A12945", "浙A1234S"])).expect("a match");
        assert_eq!(clear.key, 1);
        assert!(close(clear.score, similarity("浙A12345", "浙A1234S")));
    }

    #[test]
    fn no_candidates_is_no_match() {
        assert_eq!(best_match("浙A12345", Vec::<(u32, &str)>::new()), None);
    }

    #[test]
    fn similarity_is_symmetric_and_one_only_for_equal_plates() {
        let plates = [
            "浙A12345",
            "浙A1234S",
            "琼A12345",
            "浙A1245",
            "浙AD12345",
            "BMW1234",
            "",
            "京",
        ];
        for a in plates {
            for b in plates {
                let ab = similarity(a, b);
                assert_eq!(ab, similarity(b, a), "{a} / {b}");
                assert_eq!(ab == 1.0, a == b, "{a} / {b}");
                assert!((0.0..=1.0).contains(&ab), "{a} / {b}");
            }
        }
    }

    fn chinese_plate() -> impl Strategy<Value = String> {
        let provinces: Vec<char> = PROVINCES.chars().collect();
        (
            proptest::sample::select(provinces),
            "[A-HJ-NP-Z][A-HJ-NP-Z0-9]{5,6}",
        )
            .prop_map(|(province, rest)| format!("{province}{rest}"))
    }

    proptest! {
        #[test]
        fn similarity_is_symmetric_and_bounded(a in chinese_plate(), b in chinese_plate()) {
            let ab = similarity(&a, &b);
            prop_assert_eq!(ab, similarity(&b, &a));
            prop_assert!((0.0..=1.0).contains(&ab));
            prop_assert_eq!(ab == 1.0, a == b);
        }

        #[test]
        fn a_plate_among_others_is_found_exactly(
            plates in proptest::collection::vec(chinese_plate(), 1..50),
            pick in any::<proptest::sample::Index>(),
        ) {
            let read = plates[pick.index(plates.len())].clone();
            let found = best_match(&read, plates.iter().map(String::as_str).enumerate())
                .expect("a match");
            prop_assert_eq!(found.kind, MatchKind::Exact);
            prop_assert_eq!(plates[found.key].as_str(), read.as_str());
        }

        #[test]
        fn one_confusion_scores_at_least_nine_tenths(
            plate in chinese_plate(),
            at in any::<proptest::sample::Index>(),
            pair in proptest::sample::select(CONFUSION_PAIRS.to_vec()),
            flip in any::<bool>(),
        ) {
            let (a, b) = if flip { (pair.1, pair.0) } else { pair };
            let mut chars: Vec<char> = plate.chars().collect();
            let i = 1 + at.index(chars.len() - 1);
            chars[i] = a;
            let plate: String = chars.iter().collect();
            chars[i] = b;
            let read: String = chars.iter().collect();
            prop_assert!(similarity(&read, &plate) >= 0.9);
        }

        /// Skipping candidates early never changes the answer of scoring every one of them.
        #[test]
        fn pruning_never_changes_the_match(
            (read, plates) in chinese_plate().prop_flat_map(|read| {
                let plates = proptest::collection::vec(misread(read.clone()), 0..30);
                (Just(read), plates)
            }),
        ) {
            let found = best_match(&read, plates.iter().map(String::as_str).enumerate());
            let expected = match plates.iter().position(|plate| *plate == read) {
                Some(key) => Some((key, 1.0, MatchKind::Exact)),
                None => reference_fuzzy_match(&read, &plates),
            };
            prop_assert_eq!(found.map(|m| (m.key, m.kind)), expected.map(|e| (e.0, e.2)));
            if let (Some(found), Some(expected)) = (found, expected) {
                prop_assert!(close(found.score, expected.1), "{} {}", found.score, expected.1);
            }
        }
    }

    /// `plate` with one to three random edits drawn from confusions, provinces and plain errors.
    fn misread(plate: String) -> impl Strategy<Value = String> {
        let edit = (
            0..4_u8,
            any::<proptest::sample::Index>(),
            proptest::sample::select("京琼沪粤08DQBS5A".chars().collect::<Vec<char>>()),
        );
        proptest::collection::vec(edit, 1..=3).prop_map(move |edits| {
            let mut chars: Vec<char> = plate.chars().collect();
            for (kind, at, c) in edits {
                let i = at.index(chars.len());
                match kind {
                    0 => chars[i] = c,
                    1 if chars.len() > 1 => {
                        chars.remove(i);
                    }
                    2 => chars.insert(i, c),
                    _ if i + 1 < chars.len() => chars.swap(i, i + 1),
                    _ => {}
                }
            }
            chars.into_iter().collect()
        })
    }

    /// Scores every candidate and applies the documented rule, without any pruning.
    fn reference_fuzzy_match(read: &str, plates: &[String]) -> Option<(usize, f64, MatchKind)> {
        let scores: Vec<f64> = plates.iter().map(|plate| similarity(read, plate)).collect();
        let (best, best_score) = scores.iter().copied().enumerate().fold(
            None,
            |best: Option<(usize, f64)>, (i, score)| match best {
                Some((_, best_score)) if score <= best_score => best,
                _ => Some((i, score)),
            },
        )?;
        if best_score + SCORE_TOLERANCE < MIN_SCORE {
            return None;
        }
        let runner_up = scores
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != best)
            .map(|(_, &score)| score)
            .fold(0.0, f64::max);
        let gap = best_score - runner_up;
        let score = if gap >= AMBIGUITY_MARGIN {
            best_score
        } else {
            best_score * (0.5 + 0.5 * gap / AMBIGUITY_MARGIN)
        };
        Some((best, score, MatchKind::Fuzzy))
    }
}
