/*
 * null_filter: the reference "do nothing" milter on Debian's libmilter (libmilter-dev).
 *
 * Every callback is defined and returns SMFIS_CONTINUE, so libmilter negotiates away no stage
 * and asks for no "no reply" option: the MTA sends every command and waits for every reply.
 * This is the cost of the milter protocol alone through the reference library -- what a C
 * filter that looks at everything but decides nothing costs. Flags: SMFIF_NONE (no actions),
 * as a filter that never modifies a message.
 *
 *   cc -O2 -o null_filter bench/null_filter.c -lmilter -lpthread
 *   ./null_filter inet:18892@127.0.0.1 [backlog [protocol-mask]]
 *
 * protocol-mask (experiments only, e.g. 0x7370 = what mxsentry negotiates: no DATA, headers,
 * EOH, body, unknown; no reply to CONNECT, HELO, MAIL): ask for these SMFIP_* bits instead.
 *
 * Runs in the foreground until SIGTERM/SIGINT (libmilter's own signal handling).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <libmilter/mfapi.h>

static sfsistat n_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{ (void)ctx; (void)host; (void)addr; return SMFIS_CONTINUE; }
static sfsistat n_helo(SMFICTX *ctx, char *helo)
{ (void)ctx; (void)helo; return SMFIS_CONTINUE; }
static sfsistat n_envfrom(SMFICTX *ctx, char **argv)
{ (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat n_envrcpt(SMFICTX *ctx, char **argv)
{ (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat n_header(SMFICTX *ctx, char *name, char *value)
{ (void)ctx; (void)name; (void)value; return SMFIS_CONTINUE; }
static sfsistat n_eoh(SMFICTX *ctx)
{ (void)ctx; return SMFIS_CONTINUE; }
static sfsistat n_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{ (void)ctx; (void)chunk; (void)len; return SMFIS_CONTINUE; }
static sfsistat n_eom(SMFICTX *ctx)
{ (void)ctx; return SMFIS_CONTINUE; }
static sfsistat n_abort(SMFICTX *ctx)
{ (void)ctx; return SMFIS_CONTINUE; }
static sfsistat n_close(SMFICTX *ctx)
{ (void)ctx; return SMFIS_CONTINUE; }
static sfsistat n_unknown(SMFICTX *ctx, const char *cmd)
{ (void)ctx; (void)cmd; return SMFIS_CONTINUE; }
static sfsistat n_data(SMFICTX *ctx)
{ (void)ctx; return SMFIS_CONTINUE; }
/* Protocol flags to ask for instead of libmilter's default (0: the default), see main(). */
static unsigned long want_protocol = 0;

/* By default: accept what the MTA offers, as libmilter does without a negotiate callback
 * (every stage sent, every reply awaited). With a protocol mask on the command line, ask for
 * exactly those SMFIP_* bits (masked with the offer) -- for experiments only. */
static sfsistat n_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                            unsigned long f2, unsigned long f3, unsigned long *pf0,
                            unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
    (void)ctx; (void)f2; (void)f3;
    if (want_protocol == 0)
        return SMFIS_ALL_OPTS;
    *pf0 = f0 & SMFIF_NONE;
    *pf1 = f1 & want_protocol;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "null_filter",  /* filter name */
    SMFI_VERSION,   /* version code */
    SMFIF_NONE,     /* flags: no actions */
    n_connect,
    n_helo,
    n_envfrom,
    n_envrcpt,
    n_header,
    n_eoh,
    n_body,
    n_eom,
    n_abort,
    n_close,
    n_unknown,
    n_data,
    n_negotiate,
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET [backlog [protocol-mask]]   e.g. inet:18892@127.0.0.1\n",
                argv[0]);
        return 2;
    }
    if (smfi_setconn(argv[1]) == MI_FAILURE) {
        fprintf(stderr, "smfi_setconn %s failed\n", argv[1]);
        return 1;
    }
    if (argc > 3)
        want_protocol = strtoul(argv[3], NULL, 0);
    if (argc > 2 && smfi_setbacklog(atoi(argv[2])) == MI_FAILURE) {
        fprintf(stderr, "smfi_setbacklog failed\n");
        return 1;
    }
    if (smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "smfi_register failed\n");
        return 1;
    }
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
