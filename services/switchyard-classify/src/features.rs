//! TF-IDF features of a short text: lower-cased word unigrams and bigrams, and character
//! 2- to 5-grams over the whole lower-cased text (words joined by single spaces, padded at both
//! ends), so misspellings and inflections still share features and grams also span word
//! boundaries. Term frequency is sublinear (1 + ln tf), weighted by
//! smoothed IDF, and each vector is L2-normalised. Vectors are sparse, sorted by index.

use std::collections::HashMap;

/// A sparse vector: (feature index, value), ascending by index.
pub type Sparse = Vec<(u32, f32)>;

/// The vocabulary and IDF weights learnt from training texts.
#[derive(Debug, Clone, Default)]
pub struct Vectorizer {
    vocab: HashMap<String, u32>,
    idf: Vec<f32>,
}

/// Calls `f` with every feature of `text` (repeats included).
fn grams(text: &str, mut f: impl FnMut(&str)) {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .collect();
    let mut buf = String::new();
    for (i, w) in words.iter().enumerate() {
        buf.clear();
        buf.push_str("w:");
        buf.push_str(w);
        f(&buf);
        if let Some(next) = words.get(i + 1) {
            buf.push(' ');
            buf.push_str(next);
            f(&buf);
        }
    }
    // Character grams over the whole text, so they also span word boundaries.
    let padded: Vec<char> = std::iter::once(' ')
        .chain(words.join(" ").chars())
        .chain(std::iter::once(' '))
        .collect();
    for n in 2..=5 {
        for window in padded.windows(n) {
            buf.clear();
            buf.push_str("c:");
            buf.extend(window);
            f(&buf);
        }
    }
}

impl Vectorizer {
    /// Learns the vocabulary (features in at least `min_df` texts) and IDF weights.
    pub fn fit<'a>(texts: impl IntoIterator<Item = &'a str>, min_df: u32) -> Self {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut n = 0u32;
        let mut seen: Vec<String> = Vec::new();
        for text in texts {
            n += 1;
            seen.clear();
            grams(text, |g| seen.push(g.to_string()));
            seen.sort_unstable();
            seen.dedup();
            for g in seen.drain(..) {
                *df.entry(g).or_default() += 1;
            }
        }
        let mut kept: Vec<(String, u32)> = df.into_iter().filter(|(_, d)| *d >= min_df).collect();
        // A fixed order, so the same texts always give the same model.
        kept.sort_unstable();
        let mut vocab = HashMap::with_capacity(kept.len());
        let mut idf = Vec::with_capacity(kept.len());
        for (i, (g, d)) in kept.into_iter().enumerate() {
            vocab.insert(g, i as u32);
            idf.push(((1.0 + n as f32) / (1.0 + d as f32)).ln() + 1.0);
        }
        Self { vocab, idf }
    }

    /// Features known to the vocabulary.
    pub fn len(&self) -> usize {
        self.idf.len()
    }

    /// Whether nothing was learnt.
    pub fn is_empty(&self) -> bool {
        self.idf.is_empty()
    }

    /// The text's L2-normalised TF-IDF vector (empty when no feature is known).
    pub fn transform(&self, text: &str) -> Sparse {
        let mut counts: HashMap<u32, f32> = HashMap::new();
        grams(text, |g| {
            if let Some(&i) = self.vocab.get(g) {
                *counts.entry(i).or_default() += 1.0;
            }
        });
        let mut v: Sparse = counts
            .into_iter()
            .map(|(i, tf)| (i, (1.0 + tf.ln()) * self.idf[i as usize]))
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (_, x) in &mut v {
                *x /= norm;
            }
        }
        v
    }
}

/// The dot product of two sorted sparse vectors (their cosine when both are normalised).
pub fn dot(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let (mut i, mut j, mut sum) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_pairs_and_character_grams() {
        let mut all = Vec::new();
        grams("Card lost", |g| all.push(g.to_string()));
        for g in [
            "w:card",
            "w:card lost",
            "w:lost",
            "c: c",
            "c:card ",
            "c:lost ",
        ] {
            assert!(all.iter().any(|x| x == g), "{g} missing from {all:?}");
        }
    }

    #[test]
    fn vectors_are_normalised_and_similar_texts_are_close() {
        let texts = ["my card was stolen", "card stolen today", "how do i top up"];
        let v = Vectorizer::fit(texts, 1);
        let a = v.transform("my card got stolen");
        let norm: f32 = a.iter().map(|(_, x)| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        let near = dot(&a, &v.transform("card stolen today"));
        let far = dot(&a, &v.transform("how do i top up"));
        assert!(near > far + 0.2, "{near} vs {far}");
        assert!(v.transform("zzzz qqqq").is_empty() || dot(&a, &v.transform("zzzz")) < 0.05);
    }
}
