use super::*;

fn sample() -> State {
    let ws = ConnState {
        key: 3,
        generation: 17,
        peer: "192.0.2.7:40000".parse().unwrap(),
        metered: true,
        readable: false,
        write_shut: false,
        peer_gone: false,
        input: b"\x81\x85half".to_vec(),
        output: b"ame\"}".to_vec(),
        phase: PhaseState::Ws(WsState {
            session: (1, 9),
            last_seen: Rel(-2_000_000_000),
            next_ping: Rel(28_000_000_000),
            partial: Some((1, "héllo wor".as_bytes().to_vec())),
        }),
    };
    let http = ConnState {
        key: 0,
        generation: 20,
        peer: "[2001:db8::1]:443".parse().unwrap(),
        metered: false,
        readable: true,
        write_shut: false,
        peer_gone: false,
        input: b"GET /api/on".to_vec(),
        output: Vec::new(),
        phase: PhaseState::Http { deadline: Rel(9_000_000_000), continue_sent: true },
    };
    let closing = ConnState {
        key: 5,
        write_shut: true,
        peer_gone: true,
        phase: PhaseState::Closing { until: Rel(1) },
        ..http.clone()
    };
    State {
        next_generation: 21,
        conns: vec![ws, http, closing],
        chat: ChatState {
            sessions: SessionsState {
                next_generation: 10,
                sessions: vec![SessionState {
                    key: 1,
                    generation: 9,
                    id_hash: [7; 32],
                    user: "ann".into(),
                    last_active: Rel(-5),
                    saved: Rel(60_000_000_000),
                }],
            },
            room: vec![MemberState { conn: 3, session: (1, 9), bucket: Some((2.5, Rel(-100))), v2: true, presence: 1 }],
            history: HistoryState {
                epoch: "e1".into(),
                last_id: 42,
                entries: vec![crate::chat::Chat::history_entry(42, 1_700_000_000_000, "ann".into(), "hi \"there\"")],
            },
            messages_in: 4,
            messages_rejected: 1,
            rate_limited: 0,
            broadcasts: 3,
        },
        register_limits: vec![Window { ip: "198.51.100.1".parse().unwrap(), start: Rel(-30), count: 2 }],
        login_limits: vec![],
        http_rate_limited: 6,
        stats: StatsState { accepted: 30, ws_opened: 2, responses: vec![(200, 12), (404, 1)], ..Default::default() },
        cluster: None,
    }
}

fn cluster_sample() -> State {
    let cluster = ClusterState {
        node: "a1b2c3d4e5f60718".into(),
        online: vec!["Bob".into(), "ann".into(), "zoë".into()],
        deferred_logouts: vec![[9; 32], [1; 32]],
    };
    State { cluster: Some(cluster), ..sample() }
}

fn handed() -> Vec<Handed> {
    vec![Handed { fd: 12, ws: true }, Handed { fd: 13, ws: false }, Handed { fd: 14, ws: false }]
}

#[test]
fn a_state_comes_back_as_it_went() {
    let bytes = encode(&sample(), &handed());
    let d = decode(&bytes).unwrap();
    assert_eq!(d.handed, handed());
    assert_eq!(d.state.unwrap(), sample());
}

#[test]
fn a_cluster_node_s_state_comes_back_as_it_went() {
    let d = decode(&encode(&cluster_sample(), &handed())).unwrap();
    assert_eq!(d.state.unwrap(), cluster_sample());
}

/// What a skiff of state format 1 wrote (checksum over bytes, no cluster section)
/// is still read: an upgrade from it keeps every socket.
/// A body as this build writes it, or with kept messages as texts (formats 1, 2).
fn body_of(state: &State, text_entries: bool) -> Vec<u8> {
    body_without_presence(state, text_entries, text_entries)
}

/// A body with kept messages as texts (formats 1, 2) and members without their
/// presence mode (formats 1 to 3), as asked.
fn body_without_presence(state: &State, text_entries: bool, without_presence: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut sink = |b: &[u8]| bytes.extend_from_slice(b);
    let mut body = W::new(&mut sink);
    body.text_entries = text_entries;
    body.without_presence = without_presence;
    body.state(state);
    body.flush();
    drop(body);
    bytes
}

/// The envelope of `handed` and a state body of format `version`.
fn wrapped(handed: &[Handed], version: u32, sum: u64, body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(handed.len() as u32).to_le_bytes());
    for h in handed {
        out.extend_from_slice(&h.fd.to_le_bytes());
        out.push(u8::from(h.ws));
    }
    let envelope_sum = checksum(&out);
    out.extend_from_slice(&envelope_sum.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// What a skiff of state format 1 wrote (checksum over bytes, no cluster section,
/// texts) and of format 2 (word checksum, cluster section, texts) is still read:
/// an upgrade from it keeps every socket, and the frames are made from the texts.
#[test]
fn formats_1_and_2_are_still_read() {
    let mut body = body_of(&sample(), true);
    let v2 = wrapped(&handed(), 2, checksum_words(&body), &body);
    assert_eq!(decode(&v2).unwrap().state.unwrap(), each_mode(sample()));
    assert_eq!(body.pop(), Some(0), "format 2 ends with the cluster marker");
    let v1 = wrapped(&handed(), 1, checksum(&body), &body);
    assert_eq!(decode(&v1).unwrap().state.unwrap(), each_mode(sample()));
    // The format-1 bytes under format 2 lack the cluster section, and the checksum differs.
    let mut bad = v1.clone();
    let at = MAGIC.len() + 4 + 5 * handed().len() + 8;
    bad[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(decode(&bad).unwrap().state.is_err());
}

/// Formats before 4 knew one presence mode: their members read back as `each`.
fn each_mode(mut state: State) -> State {
    state.chat.room.iter_mut().for_each(|m| m.presence = 0);
    state
}

/// Format 3 (frames, no presence mode) is still read, its members in mode `each`;
/// format 4 keeps a batch subscriber's mode.
#[test]
fn format_3_is_read_with_every_member_in_each_mode() {
    let body = body_without_presence(&sample(), false, true);
    let v3 = wrapped(&handed(), 3, checksum_words(&body), &body);
    assert_eq!(decode(&v3).unwrap().state.unwrap(), each_mode(sample()));
    let v4 = encode(&sample(), &handed());
    assert_eq!(decode(&v4).unwrap().state.unwrap().chat.room[0].presence, 1);
}

/// Written in chunks (the body's length and checksum put in place last), a large
/// history reads back whole; read without keeping it, it is checked and dropped;
/// the reader lets go of the bytes in order, each at most once for good.
#[test]
fn a_large_history_is_streamed_and_released_as_it_is_read() {
    let mut state = sample();
    let text = "\u{1F600}".repeat(300);
    state.chat.history.entries =
        (1..=2000).map(|id| crate::chat::Chat::history_entry(id, 7, "ann".into(), &text)).collect();
    let bytes = encode(&state, &handed());
    assert!(bytes.len() > 2000 * 1200);
    let mut released = Vec::new();
    let d = decode_with(&bytes, true, &mut |upto| released.push(upto)).unwrap();
    assert_eq!(d.state.unwrap(), state);
    assert!(released.len() >= 2, "{released:?}");
    assert!(released.windows(2).all(|w| w[0] < w[1]) && *released.last().unwrap() <= bytes.len());
    let probe = decode_with(&bytes, false, &mut |_| {}).unwrap().state.unwrap();
    assert!(probe.chat.history.entries.is_empty());
    assert_eq!(probe.chat.history.last_id, state.chat.history.last_id);
    // A kept message whose frame is not a whole text frame is refused.
    let mut bad = state.clone();
    bad.chat.history.entries[5].frame = std::rc::Rc::from(&b"\x81\x05ab"[..]);
    let d = decode(&encode(&bad, &handed())).unwrap();
    assert_eq!(d.state.unwrap_err(), Error::Invalid("a kept message's frame"));
}

#[test]
fn the_streamed_word_checksum_is_the_whole_one_whatever_the_pieces() {
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for piece in [1, 3, 7, 8, 9, 64, 999] {
        let mut h = WordSum::default();
        bytes.chunks(piece).for_each(|c| h.update(c));
        assert_eq!(h.finish(), checksum_words(&bytes), "pieces of {piece}");
    }
}

#[test]
fn the_word_checksum_sees_every_flipped_bit_of_a_word_and_the_tail() {
    let bytes: Vec<u8> = (0..29u8).collect();
    let sum = checksum_words(&bytes);
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert_ne!(checksum_words(&bad), sum, "byte {i} bit {bit}");
        }
    }
    assert_ne!(checksum_words(&bytes[..28]), sum, "a shorter body");
}

#[test]
fn an_empty_state_round_trips_too() {
    let d = decode(&encode(&State::default(), &[])).unwrap();
    assert!(d.handed.is_empty());
    assert_eq!(d.state.unwrap(), State::default());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode(&sample(), &handed());
    for cut in 0..bytes.len() {
        match decode(&bytes[..cut]) {
            Err(_) => {}
            Ok(d) => assert!(d.state.is_err(), "cut at {cut} decoded a state"),
        }
    }
}

#[test]
fn every_flipped_byte_is_caught_and_the_sockets_survive_a_bad_state() {
    let bytes = encode(&sample(), &handed());
    let envelope = MAGIC.len() + 4 + 5 * handed().len() + 8;
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        match decode(&bad) {
            Err(_) => assert!(i < envelope, "byte {i} is past the envelope, which should still decode"),
            Ok(d) => {
                assert!(i >= envelope, "a flipped envelope byte {i} went unnoticed");
                assert_eq!(d.handed, handed());
                assert!(d.state.is_err(), "byte {i} flipped, state still accepted");
            }
        }
    }
}

#[test]
fn another_state_version_is_refused_by_number() {
    let mut bytes = encode(&sample(), &handed());
    let at = MAGIC.len() + 4 + 5 * handed().len() + 8;
    bytes[at..at + 4].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
    let d = decode(&bytes).unwrap();
    assert_eq!(d.state.unwrap_err(), Error::Version(STATE_VERSION + 1));
    assert_eq!(d.handed.len(), 3);
}

/// A body with a good checksum but nonsense inside (a buggy writer) is refused
/// without allocating what its counts claim.
#[test]
fn a_checksummed_body_with_absurd_counts_is_refused() {
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let out = wrapped(&[], STATE_VERSION, checksum_words(&body), &body);
    assert_eq!(decode(&out).unwrap().state.unwrap_err(), Error::Truncated);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = encode(&cluster_sample(), &handed());
    for _ in 0..2000 {
        let mut b = good.clone();
        let n = (next() % 8) as usize + 1;
        for _ in 0..n {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let _ = decode(&b);
        let len = (next() as usize) % 200;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&junk);
    }
}

#[test]
fn relative_times_put_moments_back_around_a_new_now() {
    let t0 = std::time::Instant::now();
    let later = t0 + std::time::Duration::from_secs(5);
    let earlier = t0.checked_sub(std::time::Duration::from_millis(1500)).unwrap_or(t0);
    let t1 = t0 + std::time::Duration::from_secs(100);
    assert_eq!(Rel::of(later, t0).at(t1), t1 + std::time::Duration::from_secs(5));
    assert_eq!(Rel::of(earlier, t0).at(t1), t1 - t0.duration_since(earlier));
}
