//! Protocol v2 frames that move a client's online count (hello, join, leave,
//! presence diffs and counts) and message ids for `since=`, counted without parsing
//! the name lists where the server's shape allows.

use super::{parse_u64, Bench};

/// A hello's last id and how many names its online list holds, without parsing the
/// list: names are `[A-Za-z0-9]` (CONTRACT), so each is two quotes and no bracket.
/// A storm's hellos carry up to N names each; parsing them would make the bench, not
/// the server, what a storm run measures. `None`: not in that shape (use serde).
fn hello_counts(p: &[u8]) -> Option<(u64, usize)> {
    // The server writes `online` last, after `last_id`.
    let id_at = after(&p[..p.len().min(256)], b"\"last_id\":")?;
    let last_id = parse_u64(p[id_at..].split(|b| !b.is_ascii_digit()).next()?)?;
    let list_at = id_at + after(&p[id_at..p.len().min(id_at + 64)], b"\"online\":[")?;
    let list = p[list_at..].strip_suffix(b"]}")?;
    Some((last_id, quotes(list) / 2))
}

/// How many names join and leave in a diff, `{"event":"presence","join":[..],"leave":[..]}`.
fn diff_counts(p: &[u8]) -> Option<(usize, usize)> {
    let rest = p.strip_prefix(b"{\"event\":\"presence\",\"join\":[")?;
    // A storm's diffs are all joins: no search for the end of the list then.
    if let Some(joins) = rest.strip_suffix(b"],\"leave\":[]}") {
        return Some((quotes(joins) / 2, 0));
    }
    let join_len = rest.iter().position(|&b| b == b']')?;
    let leave = rest[join_len..].strip_prefix(b"],\"leave\":[")?.strip_suffix(b"]}")?;
    Some((quotes(&rest[..join_len]) / 2, quotes(leave) / 2))
}

/// Where `needle` ends in `p`.
fn after(p: &[u8], needle: &[u8]) -> Option<usize> {
    p.windows(needle.len()).position(|w| w == needle).map(|at| at + needle.len())
}

fn quotes(p: &[u8]) -> usize {
    // Byte-wide sums over chunks that cannot overflow one: this vectorizes 16 or 32
    // bytes to an instruction, where a plain count widens every byte to 64 bits.
    p.chunks(255).map(|c| c.iter().fold(0u8, |n, &b| n + (b == b'"') as u8) as usize).sum()
}

impl Bench {
    /// v2 frames that move the online count (hello, join, leave, presence), and
    /// message ids for `since=`. True if `p` was one of the events.
    pub(super) fn on_v2_event(&mut self, i: usize, p: &[u8]) -> bool {
        const ID: &[u8] = b"{\"id\":";
        if p.starts_with(ID) {
            let digits = p[ID.len()..].split(|b| !b.is_ascii_digit()).next();
            if let Some(id) = digits.and_then(parse_u64) {
                let c = &mut self.clients[i];
                c.last_id = c.last_id.max(id);
            }
            return false;
        }
        if p.starts_with(b"{\"event\":\"join") {
            self.counts.joins += 1;
            self.online(i, 1, false);
            return true;
        }
        if p.starts_with(b"{\"event\":\"leave") {
            self.counts.leaves += 1;
            self.online(i, -1, false);
            return true;
        }
        if p.starts_with(b"{\"event\":\"hello") {
            if let Some((last_id, online)) = hello_counts(p) {
                let c = &mut self.clients[i];
                c.last_id = c.last_id.max(last_id);
                self.online(i, online as i64, true);
                return true;
            }
        }
        if p.starts_with(b"{\"event\":\"presence\",\"join\":[") {
            if let Some((joins, leaves)) = diff_counts(p) {
                self.counts.joins += joins as u64;
                self.counts.leaves += leaves as u64;
                self.online(i, joins as i64 - leaves as i64, false);
                return true;
            }
        }
        if !p.starts_with(b"{\"event\":\"presence")
            && !p.starts_with(b"{\"epoch\"")
            && !p.starts_with(b"{\"event\":\"hello")
        {
            return false;
        }
        use serde::de::IgnoredAny;
        #[derive(serde::Deserialize)]
        struct Presence {
            event: String,
            #[serde(default)]
            join: Vec<IgnoredAny>,
            #[serde(default)]
            leave: Vec<IgnoredAny>,
            #[serde(default)]
            online: Option<serde_json::Value>,
            #[serde(default)]
            last_id: Option<u64>,
        }
        let Ok(e) = serde_json::from_slice::<Presence>(p) else { return false };
        match (e.event.as_str(), &e.online) {
            ("hello", Some(serde_json::Value::Array(list))) => {
                let c = &mut self.clients[i];
                c.last_id = c.last_id.max(e.last_id.unwrap_or(0));
                self.online(i, list.len() as i64, true);
            }
            ("presence", Some(serde_json::Value::Number(n))) => self.online(i, n.as_i64().unwrap_or(0), true),
            ("presence", _) => {
                self.counts.joins += e.join.len() as u64;
                self.counts.leaves += e.leave.len() as u64;
                self.online(i, e.join.len() as i64 - e.leave.len() as i64, false);
            }
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_counted_by_their_quotes_in_the_server_s_shapes() {
        let hello = br#"{"event":"hello","epoch":"e1","last_id":42,"online":["ann","b0b","c"]}"#;
        assert_eq!(hello_counts(hello), Some((42, 3)));
        assert_eq!(hello_counts(br#"{"event":"hello","epoch":"e","last_id":0,"online":[]}"#), Some((0, 0)));
        // Past 255 names (the byte-wide sums' chunk) the count still adds up.
        let many: Vec<String> = (0..700).map(|i| format!("\"u{i}\"")).collect();
        let big = format!(r#"{{"event":"hello","epoch":"e","last_id":1,"online":[{}]}}"#, many.join(","));
        assert_eq!(hello_counts(big.as_bytes()), Some((1, 700)));
        assert_eq!(diff_counts(br#"{"event":"presence","join":["a","b"],"leave":[]}"#), Some((2, 0)));
        assert_eq!(diff_counts(br#"{"event":"presence","join":["a"],"leave":["b","c","d"]}"#), Some((1, 3)));
        assert_eq!(diff_counts(br#"{"event":"presence","online":3}"#), None, "a count is not a diff");
    }
}
