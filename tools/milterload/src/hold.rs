//! `--hold`: many idle open connections, for the filter's memory per connection.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxsentry::protocol::command::{ClientAddress, Command};
use mxsentry::protocol::negotiate::flags;

use crate::conn::negotiate;
use crate::session::{push_macros, Ctx, SessionVars};
use crate::stats::{Stat, Stats};
use crate::Mta;

pub(crate) async fn hold(ctx: Arc<Ctx>, count: usize) -> (Stats, usize, Duration) {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(ctx.args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let mut stats = Stats::default();
            let r = async {
                let mut c =
                    negotiate(&ctx.target, Mta::Sendmail, ctx.args.nagle, &mut stats).await?;
                let client = &ctx.clients[(n as u64 % ctx.clients.len() as u64) as usize];
                let vars = SessionVars {
                    client,
                    queue_id: String::new(),
                    from: String::new(),
                    rcpt: String::new(),
                };
                push_macros(
                    &mut c,
                    b'C',
                    flags::SMFIM_CONNECT,
                    &vars,
                    ctx.args.no_macros,
                );
                let connect = Command::Connect {
                    hostname: client.hostname.clone(),
                    address: ClientAddress::Inet {
                        ip: client.ip,
                        port: 40000 + (n % 20000) as u16,
                    },
                };
                c.issue(
                    &connect,
                    flags::SMFIP_NOCONNECT,
                    flags::SMFIP_NR_CONN,
                    Stat::Connect,
                    &mut stats,
                )
                .await?;
                push_macros(&mut c, b'H', flags::SMFIM_HELO, &vars, ctx.args.no_macros);
                let helo = Command::Helo {
                    name: client.helo.clone(),
                };
                c.issue(
                    &helo,
                    flags::SMFIP_NOHELO,
                    flags::SMFIP_NR_HELO,
                    Stat::Helo,
                    &mut stats,
                )
                .await?;
                c.flush(&mut stats).await?;
                Ok::<_, std::io::Error>(c)
            }
            .await;
            Some(match r {
                Ok(c) => (Some(c), stats),
                Err(e) => {
                    stats.errors += 1;
                    *stats.error_kinds.entry(e.to_string()).or_default() += 1;
                    (None, stats)
                }
            })
        }));
    }
    let mut all = Stats::default();
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some((c, s))) = t.await {
            all.merge(s);
            conns.extend(c);
        }
    }
    let open_time = t0.elapsed();
    let held = conns.len();
    say!("holding {held} connections");
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(ctx.args.hold_secs)) => {}
        _ = terminate() => {}
    }
    drop(conns);
    (all, held, open_time)
}

pub(crate) async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
