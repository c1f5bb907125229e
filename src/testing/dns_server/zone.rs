//! The test server's zone: the records and failures it serves, parsed from the zone text
//! format of the module documentation, and the lookup that answers a question from them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    ServFail,
    Refused,
    NxDomain,
    Drop,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Node {
    /// Records with their TTL; the owner name is filled in when answering.
    records: Vec<(u32, RData)>,
    /// Failure for every query (`None`) or for queries of one type.
    failures: Vec<(Option<RecordType>, Failure)>,
    delay: Duration,
}

impl Node {
    pub(super) fn failure_for(&self, qtype: RecordType) -> Option<Failure> {
        let typed = self
            .failures
            .iter()
            .find(|(t, _)| *t == Some(qtype))
            .map(|(_, f)| *f);
        typed.or_else(|| {
            self.failures
                .iter()
                .find(|(t, _)| t.is_none())
                .map(|(_, f)| *f)
        })
    }

    pub(super) fn cname(&self) -> Option<(u32, &Name)> {
        self.records.iter().find_map(|(ttl, rdata)| match rdata {
            RData::CNAME(CNAME(target)) => Some((*ttl, target)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct Zone {
    /// Keyed by lowercased name without trailing dot (wildcards as `*.rest`).
    nodes: HashMap<String, Node>,
    negative_ttl: u32,
}

/// Lowercases and strips the trailing dot.
pub(super) fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

pub(super) enum Found<'a> {
    Node(&'a Node),
    EmptyNonTerminal,
    Missing,
}

impl Zone {
    pub(super) fn parse(text: &str) -> Result<Zone, String> {
        let mut zone = Zone {
            nodes: HashMap::new(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        };
        for (index, line) in text.lines().enumerate() {
            zone.parse_line(line)
                .map_err(|e| format!("zone line {}: {e}: {}", index + 1, line.trim()))?;
        }
        Ok(zone)
    }

    pub(super) fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let tokens = tokenize(line)?;
        let mut tokens = tokens.iter().map(String::as_str).peekable();
        let Some(owner) = tokens.next() else {
            return Ok(()); // blank or comment
        };
        if owner.eq_ignore_ascii_case("$NEGATIVE_TTL") {
            let ttl = tokens.next().ok_or("$NEGATIVE_TTL needs a number")?;
            self.negative_ttl = ttl.parse().map_err(|_| format!("bad TTL {ttl:?}"))?;
            return no_more(tokens);
        }
        let key = normalize(owner);
        if key.is_empty() {
            return Err("empty name".into());
        }
        parse_name(&key)?;

        let mut delay = Duration::ZERO;
        if tokens
            .peek()
            .is_some_and(|t| t.eq_ignore_ascii_case("DELAY"))
        {
            tokens.next();
            let text = tokens.next().ok_or("DELAY needs a duration")?;
            delay = parse_duration(text)?;
        }
        let mut ttl = DEFAULT_TTL;
        if let Some(text) = tokens
            .peek()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
        {
            ttl = text.parse().map_err(|_| format!("bad TTL {text:?}"))?;
            tokens.next();
        }

        let node = self.nodes.entry(key).or_default();
        node.delay = node.delay.max(delay);
        let Some(kind) = tokens.next() else {
            return if delay.is_zero() {
                Err("missing record type".into())
            } else {
                Ok(())
            };
        };
        let kind = kind.to_ascii_uppercase();
        let failure = match kind.as_str() {
            "SERVFAIL" => Some(Failure::ServFail),
            "REFUSED" => Some(Failure::Refused),
            "NXDOMAIN" => Some(Failure::NxDomain),
            "DROP" => Some(Failure::Drop),
            _ => None,
        };
        if let Some(failure) = failure {
            let only = match tokens.next() {
                Some(t) => Some(parse_type(t)?),
                None => None,
            };
            node.failures.push((only, failure));
            return no_more(tokens);
        }

        let need = format!("{kind} needs data");
        let mut data = || tokens.next().ok_or_else(|| need.clone());
        let rdata = match kind.as_str() {
            "A" => {
                let text = data()?;
                RData::A(A(text
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("bad IPv4 address {text:?}"))?))
            }
            "AAAA" => {
                let text = data()?;
                RData::AAAA(AAAA(
                    text.parse::<Ipv6Addr>()
                        .map_err(|_| format!("bad IPv6 address {text:?}"))?,
                ))
            }
            "PTR" => RData::PTR(PTR(parse_name(data()?)?)),
            "CNAME" => RData::CNAME(CNAME(parse_name(data()?)?)),
            "NS" => RData::NS(NS(parse_name(data()?)?)),
            "MX" => {
                let text = data()?;
                let preference = text
                    .parse::<u16>()
                    .map_err(|_| format!("bad MX preference {text:?}"))?;
                RData::MX(MX::new(preference, parse_name(data()?)?))
            }
            "TXT" => {
                let strings: Vec<&str> = std::iter::from_fn(|| data().ok()).collect();
                if strings.is_empty() {
                    return Err("TXT needs data".into());
                }
                let chunks: Vec<&[u8]> = strings
                    .iter()
                    .flat_map(|s| {
                        let bytes = s.as_bytes();
                        if bytes.is_empty() {
                            vec![bytes]
                        } else {
                            bytes.chunks(255).collect()
                        }
                    })
                    .collect();
                RData::TXT(TXT::from_bytes(chunks))
            }
            other => return Err(format!("unknown record type {other:?}")),
        };
        if node.cname().is_some() || (matches!(rdata, RData::CNAME(_)) && !node.records.is_empty())
        {
            return Err("a CNAME cannot coexist with other records".into());
        }
        node.records.push((ttl, rdata));
        no_more(tokens)
    }

    pub(super) fn find(&self, key: &str) -> Found<'_> {
        if let Some(node) = self.nodes.get(key) {
            return Found::Node(node);
        }
        let below = format!(".{key}");
        if self.nodes.keys().any(|k| k.ends_with(&below)) {
            return Found::EmptyNonTerminal;
        }
        let mut rest = key;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(node) = self.nodes.get(&format!("*.{parent}")) {
                return Found::Node(node);
            }
            rest = parent;
        }
        Found::Missing
    }

    /// The delay, and the response to send (`None`: send nothing).
    pub(super) fn respond(&self, request: &Message) -> (Duration, Option<Message>) {
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .add_queries(request.queries().iter().cloned());
        if request.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(OUR_EDNS_PAYLOAD).set_version(0);
            response.set_edns(edns);
        }
        if request.op_code() != OpCode::Query {
            response.set_response_code(ResponseCode::NotImp);
            return (Duration::ZERO, Some(response));
        }
        let [query] = request.queries() else {
            response.set_response_code(ResponseCode::FormErr);
            return (Duration::ZERO, Some(response));
        };
        let qtype = query.query_type();
        let mut owner = query.name().clone();
        let mut delay = Duration::ZERO;
        let mut answers = Vec::new();
        let mut code = ResponseCode::ServFail; // if the CNAME chain is too long
        let mut negative = false;
        for _ in 0..=MAX_CNAME_CHAIN {
            let node = match self.find(&normalize(&owner.to_ascii())) {
                Found::Node(node) => node,
                Found::EmptyNonTerminal => {
                    (code, negative) = (ResponseCode::NoError, true);
                    break;
                }
                Found::Missing => {
                    (code, negative) = (ResponseCode::NXDomain, true);
                    break;
                }
            };
            delay = delay.max(node.delay);
            match node.failure_for(qtype) {
                Some(Failure::Drop) => return (delay, None),
                Some(Failure::ServFail) => {
                    answers.clear();
                    code = ResponseCode::ServFail;
                    break;
                }
                Some(Failure::Refused) => {
                    answers.clear();
                    code = ResponseCode::Refused;
                    break;
                }
                Some(Failure::NxDomain) => {
                    (code, negative) = (ResponseCode::NXDomain, true);
                    break;
                }
                None => {}
            }
            let before = answers.len();
            answers.extend(
                node.records
                    .iter()
                    .filter(|(_, rdata)| qtype == RecordType::ANY || rdata.record_type() == qtype)
                    .map(|(ttl, rdata)| Record::from_rdata(owner.clone(), *ttl, rdata.clone())),
            );
            if answers.len() > before {
                code = ResponseCode::NoError;
                break;
            }
            match node.cname() {
                Some((ttl, target)) if qtype != RecordType::CNAME => {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    owner = target.clone();
                }
                _ => {
                    (code, negative) = (ResponseCode::NoError, true);
                    break;
                }
            }
        }
        response
            .set_authoritative(matches!(
                code,
                ResponseCode::NoError | ResponseCode::NXDomain
            ))
            .set_response_code(code)
            .add_answers(answers);
        if negative {
            response.add_name_server(self.soa(&owner));
        }
        (delay, Some(response))
    }

    /// The SOA of the (pretend) zone of `name`: its top-level domain.
    pub(super) fn soa(&self, name: &Name) -> Record {
        let apex = if name.num_labels() == 0 {
            Name::root()
        } else {
            name.trim_to(1)
        };
        #[allow(clippy::expect_used, reason = "constant names, valid by inspection")]
        let (mname, rname) = (
            Name::from_ascii("ns.test.").expect("valid name"),
            Name::from_ascii("hostmaster.test.").expect("valid name"),
        );
        let ttl = self.negative_ttl;
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, ttl);
        Record::from_rdata(apex, ttl, RData::SOA(soa))
    }
}

pub(super) fn no_more<'a>(mut tokens: impl Iterator<Item = &'a str>) -> Result<(), String> {
    match tokens.next() {
        None => Ok(()),
        Some(extra) => Err(format!("unexpected {extra:?}")),
    }
}

pub(super) fn parse_name(text: &str) -> Result<Name, String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut name = Name::from_ascii(text).map_err(|e| format!("bad name {text:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

pub(super) fn parse_type(text: &str) -> Result<RecordType, String> {
    RecordType::from_str(&text.to_ascii_uppercase())
        .map_err(|_| format!("unknown record type {text:?}"))
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?} (like 200ms, 2s, 1.5s)");
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Splits a line into words; `"..."` is one word (with `\"` and `\\`); `#` outside quotes ends
/// the line.
pub(super) fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            break;
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".into()),
                    Some('"') => break,
                    Some('\\') => word.push(chars.next().ok_or("unterminated quote")?),
                    Some(c) => word.push(c),
                }
            }
            tokens.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' || c == '#' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        }
    }
    Ok(tokens)
}
