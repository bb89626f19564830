/*
 * khelper: the test container's entry point, doing for real what kubeharness' CRI emulator simulates.
 *
 * The behaviour vocabulary (flags, messages, exit codes, log line texts and their timing) is the one
 * of kubeharness/emulators/cri/behaviour.py, process.py and exec.py; keep the three in step.
 *
 * Main mode: `khelper [--flag=value | --flag value ...]`
 *   Flags are parsed as behaviour.py parses them (Python int()/float() syntax, durations such as
 *   500ms, 2s, 1m, 1h or bare seconds); a malformed flag prints "khelper: <why>" and the usage line
 *   on stderr and exits 2. Otherwise one single-threaded event loop (ppoll + CLOCK_MONOTONIC) writes
 *   log line n (1-based) at start + (n-1)/rate as "<text> <n>" padded with " xxx..." to
 *   --log-line-bytes, one write() per line; grows memory; burns CPU in a duty cycle; serves HTTP
 *   (health, /redirect, /status, /hang: the answers of kubeharness/emulators/cri/httpanswers.py, byte
 *   for byte), TCP and gRPC health (a small HTTP/2 server, see below; the emulator's is grpchealth.py);
 *   and exits after --exit-after, or --sigterm-delay after SIGTERM, writing --termination-message to
 *   --termination-message-path (default /dev/termination-log) as it does. Lines due at or after the
 *   instant of the exit are never written, lines due before it always are (as in the emulator).
 *   No threads: the loop itself burns up to 1000 millicores; each further (part of a) core is burnt by
 *   a forked process (at most one per further online CPU) that dies with its parent (PR_SET_PDEATHSIG).
 *   As PID 1 it also reaps the orphans re-parented to it. A port it cannot listen on, a --disk-mib
 *   file it cannot write or memory it cannot get is reported on stderr, and it carries on.
 *
 * Exec mode: `khelper check ready|healthy|live`, `khelper exit N`, `khelper sleep D`,
 *   `khelper echo WORDS`, `khelper true`, `khelper false`. The check answers from the state file the
 *   main process writes at start ($KHELPER_STATE, default /tmp/.khelper-state).
 *
 * Which mode: as PID 1 (the container's own process) always main mode, exactly as the emulator
 * reads a container's command line. Otherwise (an exec, or a shared PID namespace, or a test on a
 * host) an argument that does not start with "-" selects exec mode, anything else main mode.
 *
 * Environment: KHELPER_STATE (state file), KHELPER_DISK_FILE (the --disk-mib file, default
 * /tmp/khelper-disk), KHELPER_LISTEN_ADDR (an IPv4 or IPv6 literal to listen on; default all).
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o khelper khelper.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HELPER "khelper"
#define NS_PER_S INT64_C(1000000000)
#define NEVER INT64_MAX
#define MIB (1024.0 * 1024.0)
#define DEFAULT_STATE "/tmp/.khelper-state"
#define DEFAULT_DISK "/tmp/khelper-disk"

static const char USAGE[] =
    "usage: " HELPER " [--exit-after=D] [--exit-code=N] [--log-rate=N] [--log-count=N] [--log-stream=S] "
    "[--log-line-bytes=N] [--log-text=T] [--ready-after=D] [--unhealthy-after=D] [--http-port=N] [--tcp-port=N] "
    "[--grpc-port=N] [--grpc-service=NAME] [--memory-mib=M] [--memory-mib-per-second=R] [--cpu-millicores=N] "
    "[--disk-mib=N] [--ignore-sigterm] [--sigterm-exit-code=N] [--sigterm-delay=D] [--termination-message=T] "
    "[--termination-message-path=P]";

/* ---------------------------------------------------------------------------------------------- */
/* small utilities                                                                                */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        static const char msg[] = HELPER ": out of memory\n";
        ssize_t r = write(2, msg, sizeof msg - 1);
        (void)r;
        exit(1);
    }
    return p;
}

/* A growable string. */
struct sb {
    char *p;
    size_t n, cap;
};

static void sb_reserve(struct sb *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1)
        cap *= 2;
    char *p = xmalloc(cap);
    if (b->p) {
        memcpy(p, b->p, b->n);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
}

static void sb_addn(struct sb *b, const char *s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_add(struct sb *b, const char *s) { sb_addn(b, s, strlen(s)); }

static void sb_addc(struct sb *b, char c) { sb_addn(b, &c, 1); }

__attribute__((format(printf, 2, 3))) static void sb_addf(struct sb *b, const char *fmt, ...) {
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        sb_reserve(b, (size_t)n);
        vsnprintf(b->p + b->n, (size_t)n + 1, fmt, again);
        b->n += (size_t)n;
    }
    va_end(again);
}

/* Write all of buf to fd, retrying partial writes; errors (a closed reader) are ignored. */
static void write_all(int fd, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += w;
        n -= (size_t)w;
    }
}

static void put(int fd, const char *s) { write_all(fd, s, strlen(s)); }

static int64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static int64_t add_sat(int64_t a, int64_t b) {
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    return a + b;
}

/* Python's round() of a non-negative double to an integer (halves to even), saturating. */
static int64_t py_round_nonneg(double x) {
    if (!(x < 9.2e18))
        return INT64_MAX;
    int64_t i = (int64_t)x;
    double frac = x - (double)i; /* exact */
    if (frac > 0.5 || (frac == 0.5 && (i & 1)))
        i++;
    return i;
}

/* ---------------------------------------------------------------------------------------------- */
/* Python string semantics: UTF-8 code points, str.strip() whitespace, repr()                     */

/* Length of the valid UTF-8 sequence at p with its code point, or 0 for an undecodable byte. */
static int utf8_decode(const unsigned char *p, uint32_t *cp) {
    unsigned char c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if ((p[1] & 0xC0) != 0x80)
            return 0;
        *cp = ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
            return 0;
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
              (p[3] & 0x3F);
        return 4;
    }
    return 0;
}

/* How many characters Python sees in s (an undecodable byte counts as one, as with surrogateescape). */
static size_t py_len(const char *s) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; n++) {
        uint32_t cp;
        int k = utf8_decode(p, &cp);
        p += k ? k : 1;
    }
    return n;
}

/* str.isspace(); int() and float() strip the same set except \x1c-\x1f (`for_number`). */
static bool py_space(uint32_t c, bool for_number) {
    if (c >= 0x1C && c <= 0x1F)
        return !for_number;
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The value of a Unicode decimal digit (category Nd, as of Unicode 14: Python 3.11), or -1. int(),
 * float() and the regex \d of a duration all take any of them. Each entry starts a run 0-9. */
static int py_decimal(uint32_t c) {
    static const uint32_t zeros[] = {
        0x30,    0x660,   0x6F0,   0x7C0,   0x966,   0x9E6,   0xA66,   0xAE6,   0xB66,   0xBE6,   0xC66,
        0xCE6,   0xD66,   0xDE6,   0xE50,   0xED0,   0xF20,   0x1040,  0x1090,  0x17E0,  0x1810,  0x1946,
        0x19D0,  0x1A80,  0x1A90,  0x1B50,  0x1BB0,  0x1C40,  0x1C50,  0xA620,  0xA8D0,  0xA900,  0xA9D0,
        0xA9F0,  0xAA50,  0xABF0,  0xFF10,  0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0,
        0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
        0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
    };
    for (size_t i = 0; i < sizeof zeros / sizeof zeros[0]; i++)
        if (c >= zeros[i] && c < zeros[i] + 10)
            return (int)(c - zeros[i]);
    return -1;
}

/* str.isprintable() for non-ASCII code points: the format, separator, private-use and (the larger
 * blocks of) unassigned characters are not printable and repr() escapes them. */
static bool py_printable(uint32_t c) {
    static const uint32_t ranges[][2] = {
        {0x80, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},     {0x6DD, 0x6DD},
        {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},     {0x1680, 0x1680},   {0x180E, 0x180E},
        {0x2000, 0x200F},   {0x2028, 0x202F},   {0x205F, 0x206F},   {0x3000, 0x3000},   {0xD800, 0xF8FF},
        {0xFDD0, 0xFDEF},   {0xFEFF, 0xFEFF},   {0xFFF0, 0xFFFB},   {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
        {0x13430, 0x1343F}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0x323B0, 0xE00FF}, {0xE01F0, 0x10FFFF},
    };
    if ((c & 0xFFFE) == 0xFFFE)
        return false;
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (c >= ranges[i][0] && c <= ranges[i][1])
            return false;
    return true;
}

/* Append Python's repr() of s. */
static void sb_repr(struct sb *b, const char *s) {
    char q = (strchr(s, '\'') && !strchr(s, '"')) ? '"' : '\'';
    sb_addc(b, q);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        uint32_t c;
        int k = utf8_decode(p, &c);
        if (k == 0) {
            sb_addf(b, "\\udc%02x", *p);
            p++;
            continue;
        }
        if (c == (uint32_t)q || c == '\\') {
            sb_addc(b, '\\');
            sb_addc(b, (char)c);
        } else if (c == '\t') {
            sb_add(b, "\\t");
        } else if (c == '\n') {
            sb_add(b, "\\n");
        } else if (c == '\r') {
            sb_add(b, "\\r");
        } else if (c < 0x20 || c == 0x7F) {
            sb_addf(b, "\\x%02x", c);
        } else if (c >= 0x80 && !py_printable(c)) {
            if (c < 0x100)
                sb_addf(b, "\\x%02x", c);
            else if (c < 0x10000)
                sb_addf(b, "\\u%04x", c);
            else
                sb_addf(b, "\\U%08x", c);
        } else {
            sb_addn(b, (const char *)p, (size_t)k);
        }
        p += k;
    }
    sb_addc(b, q);
}

/* The text a number is read from: s without leading and trailing whitespace (as str.strip(), or as
 * int() and float() strip it), every Unicode decimal digit replaced by its ASCII digit. */
static char *py_number_text(const char *s, bool for_number) {
    const unsigned char *p = (const unsigned char *)s;
    char *out = xmalloc(strlen(s) + 1);
    size_t n = 0, keep = 0; /* keep: the length up to the last non-space character */
    while (*p) {
        uint32_t c;
        int k = utf8_decode(p, &c);
        size_t len = k > 0 ? (size_t)k : 1;
        bool space = k > 0 && py_space(c, for_number);
        int digit = k > 0 ? py_decimal(c) : -1;
        if (space && n == 0) {
            p += len;
            continue;
        }
        if (digit >= 0) {
            out[n++] = (char)('0' + digit);
        } else {
            memcpy(out + n, p, len);
            n += len;
        }
        if (!space)
            keep = n;
        p += len;
    }
    out[keep] = '\0';
    return out;
}

/* Digits with single underscores between them (Python's digitpart); returns the end or NULL. */
static const char *digitpart(const char *p) {
    if (*p < '0' || *p > '9')
        return NULL;
    while (1) {
        while (*p >= '0' && *p <= '9')
            p++;
        if (p[0] == '_' && p[1] >= '0' && p[1] <= '9')
            p++;
        else
            return p;
    }
}

struct pyint {
    bool negative;     /* a minus sign and a non-zero value */
    uint64_t value;    /* the magnitude, saturated */
    unsigned mod256;   /* the magnitude modulo 256 */
    char *digits;      /* str() of the magnitude, however long (allocated) */
};

/* int(text): optional whitespace, sign, digits with single underscores. */
static bool py_int(const char *text, struct pyint *out) {
    char *s = py_number_text(text, true);
    const char *p = s;
    bool minus = false;
    if (*p == '+' || *p == '-')
        minus = *p++ == '-';
    const char *end = digitpart(p);
    bool ok = end && *end == '\0';
    if (ok) {
        uint64_t v = 0;
        unsigned m = 0, ndigits = 0;
        bool saturated = false;
        char *w = out->digits = xmalloc(strlen(p) + 1);
        for (; *p; p++) {
            if (*p == '_' || (*p == '0' && w == out->digits))
                continue;
            *w++ = *p;
            unsigned d = (unsigned)(*p - '0');
            ndigits++;
            m = (m * 10 + d) % 256;
            if (v > (UINT64_MAX - d) / 10)
                saturated = true;
            else
                v = v * 10 + d;
        }
        if (ndigits > 4300) /* CPython's int max_str_digits limit */
            ok = false;
        out->value = saturated ? UINT64_MAX : v;
        out->mod256 = m;
        out->negative = minus && v != 0;
        if (w == out->digits)
            *w++ = '0';
        *w = '\0';
    }
    free(s);
    return ok;
}

/* float(text) restricted to finite, non-negative results; false for anything else. */
static bool py_float_nonneg(const char *text, double *out) {
    char *s = py_number_text(text, true);
    const char *p = s;
    if (*p == '+' || *p == '-')
        p++;
    const char *q = digitpart(p);
    bool ok = true;
    if (q) {
        if (*q == '.') {
            const char *r = digitpart(q + 1);
            q = r ? r : q + 1;
        }
    } else if (*p == '.') {
        q = digitpart(p + 1);
    }
    if (!q)
        ok = false;
    if (ok && (*q == 'e' || *q == 'E')) {
        const char *e = q + 1;
        if (*e == '+' || *e == '-')
            e++;
        q = digitpart(e);
        if (!q)
            ok = false;
    }
    if (ok && *q != '\0')
        ok = false; /* inf and nan are syntax Python accepts, but not finite: rejected either way */
    double v = 0;
    if (ok) {
        char *plain = xmalloc(strlen(s) + 1), *w = plain;
        for (const char *c = s; *c; c++)
            if (*c != '_')
                *w++ = *c;
        *w = '\0';
        v = strtod(plain, NULL);
        free(plain);
        ok = isfinite(v) && !(v < 0);
    }
    free(s);
    *out = v;
    return ok;
}

/* parse_duration_ns(): NULL on success, else the reason (allocated). Saturates at NEVER. */
static char *parse_duration(const char *text, int64_t *ns) {
    if (strcmp(text, "inf") == 0 || strcmp(text, "infinity") == 0) {
        struct sb b = {0};
        sb_add(&b, "infinity is not a finite duration");
        return b.p;
    }
    static const struct {
        const char *name;
        double seconds;
    } units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"ms", 1e-3}, {"s", 1.0}, {"m", 60.0}, {"h", 3600.0}, {"", 1.0}};
    char *s = py_number_text(text, false);
    const char *p = s;
    bool ok = *p >= '0' && *p <= '9';
    while (*p >= '0' && *p <= '9')
        p++;
    if (ok && *p == '.') {
        p++;
        ok = *p >= '0' && *p <= '9';
        while (*p >= '0' && *p <= '9')
            p++;
    }
    double unit = -1;
    for (size_t i = 0; ok && i < sizeof units / sizeof units[0]; i++)
        if (strcmp(p, units[i].name) == 0)
            unit = units[i].seconds;
    ok = ok && unit > 0;
    if (ok) {
        double num = strtod(s, NULL);
        *ns = py_round_nonneg(num * unit * 1e9);
    }
    free(s);
    if (ok)
        return NULL;
    struct sb b = {0};
    sb_add(&b, "invalid duration ");
    sb_repr(&b, text);
    sb_add(&b, " (use e.g. 500ms, 2s, 1m)");
    return b.p;
}

/* ---------------------------------------------------------------------------------------------- */
/* the flags                                                                                      */

struct config {
    bool has_exit_after;
    int64_t exit_after_ns;
    uint64_t exit_code;
    const char *exit_code_digits;
    double log_rate;
    bool has_log_count;
    uint64_t log_count;
    const char *log_stream;
    uint64_t log_line_bytes;
    const char *log_text;
    int64_t ready_after_ns;
    bool has_unhealthy_after;
    int64_t unhealthy_after_ns;
    bool has_http_port, has_tcp_port, has_grpc_port;
    struct pyint http_port, tcp_port, grpc_port;
    const char *grpc_service; /* NULL: only the empty service name is known */
    double memory_mib, memory_mib_per_second;
    uint64_t cpu_millicores;
    double disk_mib;
    bool ignore_sigterm;
    uint64_t sigterm_exit_code;
    const char *sigterm_exit_code_digits;
    int64_t sigterm_delay_ns;
    const char *termination_message; /* NULL: none is written */
    const char *termination_message_path;
};

enum kind { K_INT, K_FLOAT, K_DURATION, K_STR, K_BOOL };

enum flag_id {
    F_EXIT_AFTER, F_EXIT_CODE, F_LOG_RATE, F_LOG_COUNT, F_LOG_STREAM, F_LOG_LINE_BYTES, F_LOG_TEXT, F_READY_AFTER,
    F_UNHEALTHY_AFTER, F_HTTP_PORT, F_TCP_PORT, F_GRPC_PORT, F_GRPC_SERVICE, F_MEMORY_MIB, F_MEMORY_MIB_PER_SECOND, F_CPU_MILLICORES, F_DISK_MIB,
    F_IGNORE_SIGTERM, F_SIGTERM_EXIT_CODE, F_SIGTERM_DELAY, F_TERMINATION_MESSAGE, F_TERMINATION_MESSAGE_PATH,
};

static const struct {
    const char *name;
    enum kind kind;
    enum flag_id id;
} FLAGS[] = {
    {"--exit-after", K_DURATION, F_EXIT_AFTER},
    {"--exit-code", K_INT, F_EXIT_CODE},
    {"--log-rate", K_FLOAT, F_LOG_RATE},
    {"--log-count", K_INT, F_LOG_COUNT},
    {"--log-stream", K_STR, F_LOG_STREAM},
    {"--log-line-bytes", K_INT, F_LOG_LINE_BYTES},
    {"--log-text", K_STR, F_LOG_TEXT},
    {"--ready-after", K_DURATION, F_READY_AFTER},
    {"--unhealthy-after", K_DURATION, F_UNHEALTHY_AFTER},
    {"--http-port", K_INT, F_HTTP_PORT},
    {"--tcp-port", K_INT, F_TCP_PORT},
    {"--grpc-port", K_INT, F_GRPC_PORT},
    {"--grpc-service", K_STR, F_GRPC_SERVICE},
    {"--memory-mib", K_FLOAT, F_MEMORY_MIB},
    {"--memory-mib-per-second", K_FLOAT, F_MEMORY_MIB_PER_SECOND},
    {"--cpu-millicores", K_INT, F_CPU_MILLICORES},
    {"--disk-mib", K_FLOAT, F_DISK_MIB},
    {"--ignore-sigterm", K_BOOL, F_IGNORE_SIGTERM},
    {"--sigterm-exit-code", K_INT, F_SIGTERM_EXIT_CODE},
    {"--sigterm-delay", K_DURATION, F_SIGTERM_DELAY},
    {"--termination-message", K_STR, F_TERMINATION_MESSAGE},
    {"--termination-message-path", K_STR, F_TERMINATION_MESSAGE_PATH},
};

/* Parse the flags into cfg; NULL on success, else the message (without the "khelper: " prefix). */
static char *parse_flags(int n, char **argv, struct config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->log_stream = "stdout";
    cfg->log_text = "line";
    cfg->termination_message_path = "/dev/termination-log";
    struct sb err = {0};
    for (int i = 0; i < n;) {
        const char *token = argv[i];
        const char *eq = strchr(token, '=');
        size_t name_len = eq ? (size_t)(eq - token) : strlen(token);
        int f = -1;
        for (size_t j = 0; j < sizeof FLAGS / sizeof FLAGS[0]; j++)
            if (strlen(FLAGS[j].name) == name_len && strncmp(FLAGS[j].name, token, name_len) == 0)
                f = (int)j;
        if (f < 0) {
            sb_add(&err, "unknown flag ");
            sb_repr(&err, token);
            return err.p;
        }
        const char *name = FLAGS[f].name;
        if (FLAGS[f].kind == K_BOOL) {
            if (eq) {
                sb_addf(&err, "flag %s takes no value", name);
                return err.p;
            }
            cfg->ignore_sigterm = true;
            i++;
            continue;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= n) {
                sb_addf(&err, "flag %s needs a value", name);
                return err.p;
            }
            value = argv[++i];
        }
        i++;
        bool ok = true;
        char *detail = NULL;
        struct pyint num = {0};
        double real = 0;
        int64_t ns = 0;
        switch (FLAGS[f].kind) {
        case K_INT:
            ok = py_int(value, &num) && !num.negative;
            break;
        case K_FLOAT:
            ok = py_float_nonneg(value, &real);
            break;
        case K_DURATION:
            detail = parse_duration(value, &ns);
            ok = detail == NULL;
            break;
        default:
            break;
        }
        if (!ok) {
            sb_add(&err, "invalid value ");
            sb_repr(&err, value);
            sb_addf(&err, " for flag %s", name);
            if (detail) {
                sb_add(&err, ": ");
                sb_add(&err, detail);
            }
            return err.p;
        }
        switch (FLAGS[f].id) {
        case F_EXIT_AFTER: cfg->has_exit_after = true; cfg->exit_after_ns = ns; break;
        case F_EXIT_CODE: cfg->exit_code = num.value; cfg->exit_code_digits = num.digits; break;
        case F_LOG_RATE: cfg->log_rate = real; break;
        case F_LOG_COUNT: cfg->has_log_count = true; cfg->log_count = num.value; break;
        case F_LOG_STREAM: cfg->log_stream = value; break;
        case F_LOG_LINE_BYTES: cfg->log_line_bytes = num.value; break;
        case F_LOG_TEXT: cfg->log_text = value; break;
        case F_READY_AFTER: cfg->ready_after_ns = ns; break;
        case F_UNHEALTHY_AFTER: cfg->has_unhealthy_after = true; cfg->unhealthy_after_ns = ns; break;
        case F_HTTP_PORT: cfg->has_http_port = true; cfg->http_port = num; break;
        case F_TCP_PORT: cfg->has_tcp_port = true; cfg->tcp_port = num; break;
        case F_GRPC_PORT: cfg->has_grpc_port = true; cfg->grpc_port = num; break;
        case F_GRPC_SERVICE: cfg->grpc_service = value; break;
        case F_MEMORY_MIB: cfg->memory_mib = real; break;
        case F_MEMORY_MIB_PER_SECOND: cfg->memory_mib_per_second = real; break;
        case F_CPU_MILLICORES: cfg->cpu_millicores = num.value; break;
        case F_DISK_MIB: cfg->disk_mib = real; break;
        case F_SIGTERM_EXIT_CODE:
            cfg->sigterm_exit_code = num.value;
            cfg->sigterm_exit_code_digits = num.digits;
            break;
        case F_SIGTERM_DELAY: cfg->sigterm_delay_ns = ns; break;
        case F_TERMINATION_MESSAGE: cfg->termination_message = value; break;
        case F_TERMINATION_MESSAGE_PATH: cfg->termination_message_path = value; break;
        case F_IGNORE_SIGTERM: break;
        }
    }
    if (strcmp(cfg->log_stream, "stdout") && strcmp(cfg->log_stream, "stderr") && strcmp(cfg->log_stream, "both")) {
        sb_add(&err, "invalid value ");
        sb_repr(&err, cfg->log_stream);
        sb_add(&err, " for flag --log-stream");
        return err.p;
    }
    if (cfg->has_http_port && !(cfg->http_port.value > 0 && cfg->http_port.value < 65536)) {
        sb_addf(&err, "invalid value %s for flag --http-port", cfg->http_port.digits);
        return err.p;
    }
    if (cfg->has_tcp_port && !(cfg->tcp_port.value > 0 && cfg->tcp_port.value < 65536)) {
        sb_addf(&err, "invalid value %s for flag --tcp-port", cfg->tcp_port.digits);
        return err.p;
    }
    if (cfg->has_grpc_port && !(cfg->grpc_port.value > 0 && cfg->grpc_port.value < 65536)) {
        sb_addf(&err, "invalid value %s for flag --grpc-port", cfg->grpc_port.digits);
        return err.p;
    }
    if (cfg->exit_code > 255) {
        sb_addf(&err, "invalid value %s for flag --exit-code: exit codes run 0-255", cfg->exit_code_digits);
        return err.p;
    }
    if (cfg->sigterm_exit_code > 255) {
        sb_addf(&err, "invalid value %s for flag --sigterm-exit-code: exit codes run 0-255",
                cfg->sigterm_exit_code_digits);
        return err.p;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* the state file shared with `khelper check`                                                     */

static const char *state_path(void) {
    const char *p = getenv("KHELPER_STATE");
    return p && *p ? p : DEFAULT_STATE;
}

static bool write_state(int64_t start_mono, int64_t start_real, const struct config *cfg) {
    const char *path = state_path();
    struct sb tmp = {0}, body = {0};
    sb_addf(&tmp, "%s.tmp.%ld", path, (long)getpid());
    sb_addf(&body, "start_monotonic_ns=%" PRId64 "\n", start_mono);
    sb_addf(&body, "start_realtime_ns=%" PRId64 "\n", start_real);
    sb_addf(&body, "ready_after_ns=%" PRId64 "\n", cfg->ready_after_ns);
    sb_addf(&body, "unhealthy_after_ns=%" PRId64 "\n", cfg->has_unhealthy_after ? cfg->unhealthy_after_ns : -1);
    bool ok = false;
    int fd = open(tmp.p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ok = write(fd, body.p, body.n) == (ssize_t)body.n;
        ok = close(fd) == 0 && ok;
        ok = ok && rename(tmp.p, path) == 0;
        if (!ok)
            unlink(tmp.p);
    }
    free(tmp.p);
    free(body.p);
    return ok;
}

struct state {
    int64_t running_ns, ready_after_ns, unhealthy_after_ns; /* unhealthy_after_ns < 0: never */
};

/* What the main process wrote; a missing file reads as a default container started just now. */
static struct state read_state(void) {
    struct state st = {0, 0, -1};
    int fd = open(state_path(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return st;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return st;
    buf[n] = '\0';
    int64_t mono = -1, real = -1, ready = 0, unhealthy = -1;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        int64_t v = strtoll(eq + 1, NULL, 10);
        if (strcmp(line, "start_monotonic_ns") == 0)
            mono = v;
        else if (strcmp(line, "start_realtime_ns") == 0)
            real = v;
        else if (strcmp(line, "ready_after_ns") == 0)
            ready = v;
        else if (strcmp(line, "unhealthy_after_ns") == 0)
            unhealthy = v;
    }
    int64_t now_mono = mono_ns();
    if (mono >= 0 && mono <= now_mono)
        st.running_ns = now_mono - mono;
    else if (real >= 0)
        st.running_ns = clock_ns(CLOCK_REALTIME) - real;
    st.ready_after_ns = ready;
    st.unhealthy_after_ns = unhealthy;
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* exec mode                                                                                      */

static bool is_subcommand_word(const char *s) { return s[0] != '-'; }

static int exec_main(int argc, char **argv) {
    const char *cmd = argv[1];
    struct sb msg = {0};
    if (strcmp(cmd, "check") == 0) {
        const char *what = argc > 2 ? argv[2] : "";
        struct state st = read_state();
        if (strcmp(what, "ready") == 0) {
            if (st.running_ns >= st.ready_after_ns) {
                put(1, "ready\n");
                return 0;
            }
            put(2, "not ready yet\n");
            return 1;
        }
        if (strcmp(what, "healthy") == 0 || strcmp(what, "live") == 0) {
            if (st.unhealthy_after_ns >= 0 && st.running_ns >= st.unhealthy_after_ns) {
                put(2, "unhealthy\n");
                return 1;
            }
            put(1, "healthy\n");
            return 0;
        }
        sb_add(&msg, HELPER ": unknown check ");
        sb_repr(&msg, what);
        sb_add(&msg, " (ready, healthy, live)\n");
        put(2, msg.p);
        return 2;
    }
    if (strcmp(cmd, "exit") == 0) {
        if (argc < 3)
            return 0;
        struct pyint v;
        if (!py_int(argv[2], &v)) {
            put(2, HELPER ": exit needs a number\n");
            return 2;
        }
        return (int)(v.negative ? (256 - v.mod256) % 256 : v.mod256);
    }
    if (strcmp(cmd, "true") == 0)
        return 0;
    if (strcmp(cmd, "false") == 0)
        return 1;
    if (strcmp(cmd, "echo") == 0) {
        for (int i = 2; i < argc; i++) {
            if (i > 2)
                sb_addc(&msg, ' ');
            sb_add(&msg, argv[i]);
        }
        sb_addc(&msg, '\n');
        write_all(1, msg.p, msg.n);
        return 0;
    }
    if (strcmp(cmd, "sleep") == 0) {
        if (argc != 3) {
            put(2, "sleep: missing operand\n");
            return 1;
        }
        int64_t ns;
        char *why = parse_duration(argv[2], &ns);
        if (why) {
            sb_addf(&msg, "sleep: invalid number '%s'\n", argv[2]);
            put(2, msg.p);
            return 1;
        }
        int64_t until = add_sat(mono_ns(), ns);
        struct timespec ts = {(time_t)(until / NS_PER_S), (long)(until % NS_PER_S)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        return 0;
    }
    sb_add(&msg, HELPER ": unknown subcommand ");
    sb_repr(&msg, cmd);
    sb_addc(&msg, '\n');
    put(2, msg.p);
    return 2;
}

/* ---------------------------------------------------------------------------------------------- */
/* main mode                                                                                      */

static volatile sig_atomic_t got_term, got_chld;

static void on_term(int sig) {
    (void)sig;
    got_term = 1;
}

static void on_chld(int sig) {
    (void)sig;
    got_chld = 1;
}

#define CPU_PERIOD_NS (20 * INT64_C(1000000))

/* A helper process burning `millicores` (at most 1000) until its parent dies. */
static void spawn_burner(uint64_t millicores) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return; /* the parent, or fork failed: burn less */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3 && devnull >= 0; fd++)
        dup2(devnull, fd);
    int64_t busy = (int64_t)millicores * CPU_PERIOD_NS / 1000;
    int64_t period_start = mono_ns();
    for (;;) {
        while (mono_ns() < period_start + busy) {
        }
        period_start += CPU_PERIOD_NS;
        if (busy < CPU_PERIOD_NS) {
            struct timespec ts = {(time_t)(period_start / NS_PER_S), (long)(period_start % NS_PER_S)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
    }
}

static int listen_on(const struct pyint *port_number) {
    int port = (int)port_number->value;
    const char *addr = getenv("KHELPER_LISTEN_ADDR");
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = INADDR_ANY};
    bool try6 = true, try4 = true;
    if (addr && *addr) {
        try6 = inet_pton(AF_INET6, addr, &a6.sin6_addr) == 1;
        try4 = !try6 && inet_pton(AF_INET, addr, &a4.sin_addr) == 1;
    }
    int one = 1, zero = 0, err = EINVAL;
    if (try6) {
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
            if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0 && listen(fd, 128) == 0)
                return fd;
            err = errno;
            close(fd);
        } else {
            err = errno;
        }
        /* no IPv6 on this host: fall back to IPv4 for the any address */
        try4 = !(addr && *addr) && err != EADDRINUSE;
    }
    if (try4) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, (struct sockaddr *)&a4, sizeof a4) == 0 && listen(fd, 128) == 0)
                return fd;
            err = errno;
            close(fd);
        } else {
            err = errno;
        }
    }
    struct sb msg = {0};
    sb_addf(&msg, HELPER ": cannot listen on port %d: %s\n", port, strerror(err));
    put(2, msg.p);
    free(msg.p);
    return -1;
}

static void write_disk(double mib) {
    uint64_t total = (uint64_t)(mib * MIB);
    if (total == 0)
        return;
    const char *path = getenv("KHELPER_DISK_FILE");
    if (!path || !*path)
        path = DEFAULT_DISK;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        struct sb msg = {0};
        sb_addf(&msg, HELPER ": cannot write %s: %s\n", path, strerror(errno));
        put(2, msg.p);
        free(msg.p);
        return;
    }
    enum { BLOCK = 1 << 16 };
    static uint32_t block[BLOCK / 4];
    uint32_t x = 2463534242u; /* incompressible content, so no filesystem stores it in less space */
    for (size_t i = 0; i < BLOCK / 4; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        block[i] = x;
    }
    while (total > 0) {
        size_t n = total < BLOCK ? (size_t)total : BLOCK;
        ssize_t w = write(fd, block, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        total -= (uint64_t)w;
        block[0]++;
    }
    close(fd);
}

/* Memory: pages touched so far, in chunks allocated as the target grows. */
#define MEM_CHUNK ((size_t)4 << 20)
#define PAGE 4096
static struct {
    char **chunks;
    size_t nchunks, cap, touched;
    bool failed;
} mem;

static void grow_memory_to(size_t target) {
    while (!mem.failed && mem.touched < target) {
        size_t idx = mem.touched / MEM_CHUNK;
        if (idx >= mem.nchunks) {
            if (mem.nchunks == mem.cap) {
                size_t cap = mem.cap ? mem.cap * 2 : 64;
                char **p = realloc(mem.chunks, cap * sizeof *p);
                if (!p) {
                    mem.failed = true;
                    break;
                }
                mem.chunks = p;
                mem.cap = cap;
            }
            char *c = malloc(MEM_CHUNK);
            if (!c) {
                mem.failed = true;
                put(2, HELPER ": cannot allocate memory\n");
                break;
            }
            mem.chunks[mem.nchunks++] = c;
        }
        mem.chunks[idx][mem.touched % MEM_CHUNK] = (char)(0xA5 ^ idx);
        mem.touched += PAGE;
    }
}

/* Behaviour.memory_bytes_at() */
static size_t memory_bytes_at(const struct config *cfg, int64_t running_ns) {
    double target = cfg->memory_mib;
    if (cfg->memory_mib_per_second > 0) {
        double grown = cfg->memory_mib_per_second * (double)running_ns / 1e9;
        if (grown < target)
            target = grown;
    }
    double bytes = target * MIB;
    return bytes >= 1.8e19 ? SIZE_MAX : (size_t)bytes;
}

/* ---------------------------------------------------------------------------------------------- */
/* HTTP/1 answers (kubeharness/emulators/cri/listeners.py answers alike, byte for byte)           */

/* The reason phrase of an HTTP status code (RFC 9110 and friends); "Unknown" for any other code. */
static const char *reason_phrase(int code) {
    static const struct {
        int code;
        const char *text;
    } reasons[] = {
        {100, "Continue"}, {101, "Switching Protocols"}, {102, "Processing"}, {103, "Early Hints"},
        {200, "OK"}, {201, "Created"}, {202, "Accepted"}, {203, "Non-Authoritative Information"},
        {204, "No Content"}, {205, "Reset Content"}, {206, "Partial Content"}, {207, "Multi-Status"},
        {300, "Multiple Choices"}, {301, "Moved Permanently"}, {302, "Found"}, {303, "See Other"},
        {304, "Not Modified"}, {305, "Use Proxy"}, {307, "Temporary Redirect"}, {308, "Permanent Redirect"},
        {400, "Bad Request"}, {401, "Unauthorized"}, {402, "Payment Required"}, {403, "Forbidden"},
        {404, "Not Found"}, {405, "Method Not Allowed"}, {406, "Not Acceptable"},
        {407, "Proxy Authentication Required"}, {408, "Request Timeout"}, {409, "Conflict"}, {410, "Gone"},
        {411, "Length Required"}, {412, "Precondition Failed"}, {413, "Content Too Large"},
        {414, "URI Too Long"}, {415, "Unsupported Media Type"}, {416, "Range Not Satisfiable"},
        {417, "Expectation Failed"}, {421, "Misdirected Request"}, {422, "Unprocessable Content"},
        {425, "Too Early"}, {426, "Upgrade Required"}, {428, "Precondition Required"},
        {429, "Too Many Requests"}, {431, "Request Header Fields Too Large"},
        {451, "Unavailable For Legal Reasons"}, {500, "Internal Server Error"}, {501, "Not Implemented"},
        {502, "Bad Gateway"}, {503, "Service Unavailable"}, {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"}, {507, "Insufficient Storage"},
        {511, "Network Authentication Required"},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].code == code)
            return reasons[i].text;
    return "Unknown";
}

/* One answer: the status line, a Location when given, the body unless HEAD (1xx, 204 and 304 have
 * neither body nor Content-Length), and the connection closes. */
static void http_answer_with(struct sb *out, int code, const char *location, size_t location_len, const char *body,
                             bool head) {
    sb_addf(out, "HTTP/1.0 %d %s\r\n", code, reason_phrase(code));
    if (location) {
        sb_add(out, "Location: ");
        sb_addn(out, location, location_len);
        sb_add(out, "\r\n");
    }
    sb_add(out, "Content-Type: text/plain; charset=utf-8\r\n");
    bool bodiless = code < 200 || code == 204 || code == 304;
    if (!bodiless)
        sb_addf(out, "Content-Length: %zu\r\n", strlen(body));
    sb_add(out, "Connection: close\r\n\r\n");
    if (!bodiless && !head)
        sb_add(out, body);
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* %XX escapes decoded into out (room for n bytes); anything else, a broken escape too, kept as it is. */
static size_t percent_decode(const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
            out[w++] = (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            i += 2;
        } else {
            out[w++] = s[i];
        }
    }
    return w;
}

/* The raw value of the first query parameter called `name` ("a&b=1": a is "", b is "1"). */
static bool query_param(const char *q, size_t qn, const char *name, const char **value, size_t *value_len) {
    size_t name_len = strlen(name);
    const char *end = q + qn;
    while (q <= end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *part_end = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(part_end - q));
        const char *key_end = eq ? eq : part_end;
        if ((size_t)(key_end - q) == name_len && memcmp(q, name, name_len) == 0) {
            *value = eq ? eq + 1 : part_end;
            *value_len = (size_t)(part_end - *value);
            return true;
        }
        if (!amp)
            break;
        q = amp + 1;
    }
    return false;
}

static bool bytes_are(const char *s, size_t n, const char *word) {
    return n == strlen(word) && memcmp(s, word, n) == 0;
}

/* The answer to a request (its first line decides, any method): GET /redirect?loc=L is a 302 to L
 * (percent-decoded), /status?code=N answers N (100-599), /hang gets no answer at all (false), any
 * other path the health answer. */
static bool http_answer(const char *req, size_t len, bool healthy, struct sb *out) {
    bool head = len >= 5 && memcmp(req, "HEAD ", 5) == 0;
    const char *nl = memchr(req, '\n', len);
    size_t line_len = nl ? (size_t)(nl - req) : len;
    if (line_len > 0 && req[line_len - 1] == '\r')
        line_len--;
    const char *sp = memchr(req, ' ', line_len);
    const char *target = sp ? sp + 1 : req + line_len;
    const char *line_end = req + line_len;
    const char *target_end = memchr(target, ' ', (size_t)(line_end - target));
    if (!target_end)
        target_end = line_end;
    const char *qmark = memchr(target, '?', (size_t)(target_end - target));
    const char *path_end = qmark ? qmark : target_end;
    const char *query = qmark ? qmark + 1 : target_end;
    size_t path_len = (size_t)(path_end - target), query_len = (size_t)(target_end - query);
    const char *raw;
    size_t raw_len;
    if (bytes_are(target, path_len, "/hang"))
        return false;
    if (bytes_are(target, path_len, "/redirect")) {
        if (!query_param(query, query_len, "loc", &raw, &raw_len) || raw_len == 0) {
            http_answer_with(out, 400, NULL, 0, "missing loc\n", head);
            return true;
        }
        char *loc = xmalloc(raw_len);
        size_t loc_len = percent_decode(raw, raw_len, loc);
        bool clean = true;
        for (size_t i = 0; i < loc_len; i++)
            if ((unsigned char)loc[i] < 0x20 || loc[i] == 0x7F)
                clean = false;
        if (clean)
            http_answer_with(out, 302, loc, loc_len, "found\n", head);
        else
            http_answer_with(out, 400, NULL, 0, "invalid loc\n", head);
        free(loc);
        return true;
    }
    if (bytes_are(target, path_len, "/status")) {
        int code = -1;
        if (query_param(query, query_len, "code", &raw, &raw_len)) {
            char *text = xmalloc(raw_len);
            size_t text_len = percent_decode(raw, raw_len, text);
            long value = text_len > 0 ? 0 : -1;
            for (size_t i = 0; i < text_len && value >= 0; i++) {
                if (text[i] < '0' || text[i] > '9')
                    value = -1;
                else if (value < 1000)
                    value = value * 10 + (text[i] - '0');
            }
            free(text);
            if (value >= 100 && value <= 599)
                code = (int)value;
        }
        if (code < 0) {
            http_answer_with(out, 400, NULL, 0, "invalid code\n", head);
        } else {
            char body[32];
            snprintf(body, sizeof body, "status %d\n", code);
            http_answer_with(out, code, NULL, 0, body, head);
        }
        return true;
    }
    http_answer_with(out, healthy ? 200 : 503, NULL, 0, healthy ? "ok\n" : "unhealthy\n", head);
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* HPACK (RFC 7541): the decoder a gRPC server needs to read :path                                */
/*
 * Why a full decoder: gRPC clients (grpc-go in kubelet, grpc core in grpcio) send :path as a literal
 * with incremental indexing, its value Huffman-coded, on the first request of a connection, and as an
 * index into the dynamic table on the next ones; the table also holds their other headers, whose
 * sizes decide evictions. Guessing the path from the raw bytes would work for one client's first
 * request at best, so the static table, the dynamic table and the Huffman code are implemented.
 * Our own answers use literals without indexing and without Huffman coding, which any decoder reads.
 */

static const char *const HPACK_STATIC[61][2] = {
    {":authority", ""}, {":method", "GET"}, {":method", "POST"}, {":path", "/"}, {":path", "/index.html"},
    {":scheme", "http"}, {":scheme", "https"}, {":status", "200"}, {":status", "204"}, {":status", "206"},
    {":status", "304"}, {":status", "400"}, {":status", "404"}, {":status", "500"}, {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"}, {"accept-language", ""}, {"accept-ranges", ""}, {"accept", ""},
    {"access-control-allow-origin", ""}, {"age", ""}, {"allow", ""}, {"authorization", ""},
    {"cache-control", ""}, {"content-disposition", ""}, {"content-encoding", ""}, {"content-language", ""},
    {"content-length", ""}, {"content-location", ""}, {"content-range", ""}, {"content-type", ""},
    {"cookie", ""}, {"date", ""}, {"etag", ""}, {"expect", ""}, {"expires", ""}, {"from", ""}, {"host", ""},
    {"if-match", ""}, {"if-modified-since", ""}, {"if-none-match", ""}, {"if-range", ""},
    {"if-unmodified-since", ""}, {"last-modified", ""}, {"link", ""}, {"location", ""}, {"max-forwards", ""},
    {"proxy-authenticate", ""}, {"proxy-authorization", ""}, {"range", ""}, {"referer", ""}, {"refresh", ""},
    {"retry-after", ""}, {"server", ""}, {"set-cookie", ""}, {"strict-transport-security", ""},
    {"transfer-encoding", ""}, {"user-agent", ""}, {"vary", ""}, {"via", ""}, {"www-authenticate", ""},
};

/* The Huffman code's length in bits for each symbol 0-255 and EOS (256), from RFC 7541 Appendix B.
 * The code is canonical (codes of one length are consecutive, in symbol order, and each length
 * starts where the shorter ones ended, shifted), so the lengths alone define every code. */
static const unsigned char HUFFMAN_BITS[257] = {
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 6,  10, 10, 12, 13, 6,  8,  11, 10, 10, 8,  11, 8,  6,  6,  6,  5,  5,  5,  6,  6,  6,  6,  6,
    6,  6,  7,  8,  15, 6,  12, 10, 13, 6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,
    7,  7,  7,  7,  8,  7,  8,  13, 19, 13, 14, 6,  15, 5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5,
    6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7,  15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23,
    23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21,
    23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19,
    22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27,
    27, 27, 27, 26, 30,
};

/* Canonical decoding tables: per length, how many codes, the first code and where its symbols start. */
static struct {
    bool built;
    uint32_t count[31], first[31], offset[31];
    uint16_t symbols[257];
} huff;

static void huffman_build(void) {
    uint32_t n = 0, code = 0;
    for (unsigned len = 1; len <= 30; len++) {
        huff.first[len] = code;
        huff.offset[len] = n;
        for (unsigned s = 0; s < 257; s++)
            if (HUFFMAN_BITS[s] == len)
                huff.symbols[n++] = (uint16_t)s;
        huff.count[len] = n - huff.offset[len];
        code = (code + huff.count[len]) << 1;
    }
    huff.built = true;
}

/* Decode n Huffman-coded bytes into out (room for n * 8 / 5 + 1); -1 for EOS, or padding that is longer
 * than 7 bits or not all ones, which RFC 7541 5.2 makes a decoding error. */
static long huffman_decode(const unsigned char *in, size_t n, char *out) {
    if (!huff.built)
        huffman_build();
    size_t w = 0;
    uint32_t code = 0, len = 0;
    for (size_t i = 0; i < n; i++) {
        for (int bit = 7; bit >= 0; bit--) {
            code = (code << 1) | ((in[i] >> bit) & 1u);
            len++;
            if (len > 30)
                return -1;
            if (code - huff.first[len] < huff.count[len] && code >= huff.first[len]) {
                uint16_t sym = huff.symbols[huff.offset[len] + code - huff.first[len]];
                if (sym == 256)
                    return -1;
                out[w++] = (char)sym;
                code = len = 0;
            }
        }
    }
    if (len > 7 || code != (1u << len) - 1)
        return -1;
    return (long)w;
}

enum { HPACK_TABLE_MAX = 4096, HPACK_STRING_MAX = 8192, PATH_MAX_BYTES = 1024 };

struct hpack_entry {
    char *name, *value;
    size_t name_len, value_len;
};

/* The dynamic table, newest entry first. */
struct hpack {
    struct hpack_entry entries[HPACK_TABLE_MAX / 32];
    size_t n, size, max_size;
};

static void hpack_evict_to(struct hpack *t, size_t size) {
    while (t->n > 0 && t->size > size) {
        struct hpack_entry *e = &t->entries[--t->n];
        t->size -= e->name_len + e->value_len + 32;
        free(e->name);
        free(e->value);
    }
}

static void hpack_free(struct hpack *t) { hpack_evict_to(t, 0); }

static void hpack_insert(struct hpack *t, const char *name, size_t name_len, const char *value, size_t value_len) {
    size_t size = name_len + value_len + 32;
    hpack_evict_to(t, size > t->max_size ? 0 : t->max_size - size);
    if (size > t->max_size)
        return; /* an entry larger than the table empties it and is not added (RFC 7541 4.4) */
    memmove(&t->entries[1], &t->entries[0], t->n * sizeof t->entries[0]);
    struct hpack_entry *e = &t->entries[0];
    e->name = xmalloc(name_len);
    memcpy(e->name, name, name_len);
    e->value = xmalloc(value_len);
    memcpy(e->value, value, value_len);
    e->name_len = name_len;
    e->value_len = value_len;
    t->n++;
    t->size += size;
}

/* An integer with an N-bit prefix (RFC 7541 5.1); false when truncated or beyond 2^28. */
static bool hpack_int(const unsigned char **p, const unsigned char *end, unsigned prefix_bits, uint32_t *out) {
    if (*p >= end)
        return false;
    uint32_t mask = (1u << prefix_bits) - 1, v = **p & mask;
    (*p)++;
    if (v < mask) {
        *out = v;
        return true;
    }
    for (unsigned shift = 0; shift <= 21; shift += 7) {
        if (*p >= end)
            return false;
        unsigned char b = *(*p)++;
        v += (uint32_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* A string literal (RFC 7541 5.2) into buf (HPACK_STRING_MAX * 8 / 5 + 1 bytes); its length, or -1. */
static long hpack_string(const unsigned char **p, const unsigned char *end, char *buf) {
    if (*p >= end)
        return -1;
    bool huffman = **p & 0x80;
    uint32_t n;
    if (!hpack_int(p, end, 7, &n) || n > HPACK_STRING_MAX || n > (size_t)(end - *p))
        return -1;
    long len = (long)n;
    if (huffman)
        len = huffman_decode(*p, n, buf);
    else
        memcpy(buf, *p, n);
    *p += n;
    return len;
}

/* The name and value of table index i (1-61 static, then dynamic); false for an index beyond both. */
static bool hpack_lookup(const struct hpack *t, uint32_t i, const char **name, size_t *name_len, const char **value,
                         size_t *value_len) {
    if (i >= 1 && i <= 61) {
        *name = HPACK_STATIC[i - 1][0];
        *name_len = strlen(*name);
        *value = HPACK_STATIC[i - 1][1];
        *value_len = strlen(*value);
        return true;
    }
    if (i > 61 && i - 62 < t->n) {
        const struct hpack_entry *e = &t->entries[i - 62];
        *name = e->name;
        *name_len = e->name_len;
        *value = e->value;
        *value_len = e->value_len;
        return true;
    }
    return false;
}

static void hpack_note_path(const char *name, size_t name_len, const char *value, size_t value_len, char *path) {
    if (!bytes_are(name, name_len, ":path"))
        return;
    size_t n = value_len <= PATH_MAX_BYTES ? value_len : 0;
    memcpy(path, value, n);
    path[n] = '\0';
}

/* Decode a header block; the :path it names goes to path (NUL-terminated, "" when absent or longer than
 * PATH_MAX_BYTES). False on any decoding error: the connection then ends (COMPRESSION_ERROR). */
static bool hpack_decode(struct hpack *t, const unsigned char *p, size_t n, char *path) {
    static char name_buf[HPACK_STRING_MAX * 8 / 5 + 1], value_buf[HPACK_STRING_MAX * 8 / 5 + 1];
    const unsigned char *end = p + n;
    path[0] = '\0';
    while (p < end) {
        unsigned char b = *p;
        const char *name, *value;
        size_t name_len, value_len;
        uint32_t index;
        if ((b & 0xE0) == 0x20) { /* dynamic table size update */
            if (!hpack_int(&p, end, 5, &index) || index > HPACK_TABLE_MAX)
                return false;
            t->max_size = index;
            hpack_evict_to(t, index);
            continue;
        }
        if (b & 0x80) { /* indexed header field */
            if (!hpack_int(&p, end, 7, &index) || !hpack_lookup(t, index, &name, &name_len, &value, &value_len))
                return false;
        } else {
            bool indexing = (b & 0xC0) == 0x40;
            if (!hpack_int(&p, end, indexing ? 6 : 4, &index))
                return false;
            if (index == 0) {
                long len = hpack_string(&p, end, name_buf);
                if (len < 0)
                    return false;
                name = name_buf;
                name_len = (size_t)len;
            } else if (!hpack_lookup(t, index, &name, &name_len, &value, &value_len)) {
                return false;
            }
            long len = hpack_string(&p, end, value_buf);
            if (len < 0)
                return false;
            value = value_buf;
            value_len = (size_t)len;
            if (indexing) {
                /* copy the name first: it may be a dynamic entry that the insertion evicts */
                char *name_copy = xmalloc(name_len);
                memcpy(name_copy, name, name_len);
                hpack_insert(t, name_copy, name_len, value, value_len);
                hpack_note_path(name_copy, name_len, value, value_len, path);
                free(name_copy);
                continue;
            }
        }
        hpack_note_path(name, name_len, value, value_len, path);
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* HTTP/2 (RFC 9113) without TLS, prior knowledge only, and gRPC's grpc.health.v1.Health/Check      */
/*
 * What a unary gRPC call needs and nothing more: the client preface, SETTINGS (acknowledged; ours
 * announce nothing but MAX_CONCURRENT_STREAMS), PING (answered), WINDOW_UPDATE (ours go out as the
 * client's DATA is read; theirs are not needed, every answer being far smaller than any window),
 * HEADERS and CONTINUATION (one header block at a time, decoded in order so the HPACK table stays in
 * step), DATA, RST_STREAM (the stream is forgotten), GOAWAY (the client is leaving: its EOF ends it),
 * PRIORITY and unknown frame types (ignored). A request is answered when its stream ends. A protocol
 * error sends GOAWAY and closes the connection; nothing a client sends can do more than that.
 */

enum {
    H2_FRAME_MAX = 16384, /* SETTINGS_MAX_FRAME_SIZE: the default, which we keep */
    H2_STREAMS = 32,      /* our SETTINGS_MAX_CONCURRENT_STREAMS */
    H2_BLOCK_MAX = 16384, /* the largest header block we accept */
    H2_OUT_MAX = 65536,   /* unsent output beyond this: the client does not read, so it is dropped */
    GRPC_MESSAGE_MAX = 16384,
};
enum { FR_DATA, FR_HEADERS, FR_PRIORITY, FR_RST_STREAM, FR_SETTINGS, FR_PUSH_PROMISE, FR_PING, FR_GOAWAY,
       FR_WINDOW_UPDATE, FR_CONTINUATION };
enum { FL_END_STREAM = 0x1, FL_ACK = 0x1, FL_END_HEADERS = 0x4, FL_PADDED = 0x8, FL_PRIORITY = 0x20 };
enum { H2_NO_ERROR = 0, H2_PROTOCOL_ERROR = 1, H2_FRAME_SIZE_ERROR = 6, H2_REFUSED_STREAM = 7,
       H2_COMPRESSION_ERROR = 9, H2_ENHANCE_YOUR_CALM = 11 };
enum { GRPC_OK = 0, GRPC_UNKNOWN = 2, GRPC_NOT_FOUND = 5, GRPC_RESOURCE_EXHAUSTED = 8, GRPC_UNIMPLEMENTED = 12,
       GRPC_INTERNAL = 13 };

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define CHECK_PATH "/grpc.health.v1.Health/Check"

struct h2_stream {
    uint32_t id; /* 0: a free slot; every open stream is a Check call */
    struct sb body;
};

struct h2 {
    bool preface_seen, settings_seen;
    size_t in_len;
    uint32_t last_stream, unacked; /* the highest stream id opened; DATA bytes not yet given back */
    uint32_t block_stream;         /* a header block being received (HEADERS then CONTINUATIONs), or 0 */
    bool block_ends_stream;
    struct sb block, out;
    struct hpack table;
    struct h2_stream streams[H2_STREAMS];
    unsigned char in[9 + H2_FRAME_MAX];
};

static struct h2 *h2_new(void) {
    struct h2 *h = calloc(1, sizeof *h);
    if (h)
        h->table.max_size = HPACK_TABLE_MAX;
    return h;
}

static void h2_free(struct h2 *h) {
    hpack_free(&h->table);
    for (int i = 0; i < H2_STREAMS; i++)
        free(h->streams[i].body.p);
    free(h->block.p);
    free(h->out.p);
    free(h);
}

static void h2_frame(struct h2 *h, unsigned type, unsigned flags, uint32_t stream, const void *payload, size_t n) {
    unsigned char head[9] = {(unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n, (unsigned char)type,
                             (unsigned char)flags, (unsigned char)(stream >> 24), (unsigned char)(stream >> 16),
                             (unsigned char)(stream >> 8), (unsigned char)stream};
    sb_addn(&h->out, (const char *)head, 9);
    if (n)
        sb_addn(&h->out, payload, n);
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void hpack_put_int(struct sb *b, unsigned first, unsigned prefix_bits, size_t v) {
    size_t mask = ((size_t)1 << prefix_bits) - 1;
    if (v < mask) {
        sb_addc(b, (char)(first | v));
        return;
    }
    sb_addc(b, (char)(first | mask));
    for (v -= mask; v >= 128; v >>= 7)
        sb_addc(b, (char)(0x80 | (v & 0x7F)));
    sb_addc(b, (char)v);
}

/* A literal header field without indexing, the name by static index or (index 0) spelt out. */
static void hpack_put(struct sb *b, unsigned index, const char *name, const char *value) {
    hpack_put_int(b, 0x00, 4, index);
    if (index == 0) {
        hpack_put_int(b, 0x00, 7, strlen(name));
        sb_add(b, name);
    }
    hpack_put_int(b, 0x00, 7, strlen(value));
    sb_add(b, value);
}

static void h2_goaway(struct h2 *h, uint32_t code) {
    unsigned char payload[8];
    put_u32(payload, h->last_stream);
    put_u32(payload + 4, code);
    h2_frame(h, FR_GOAWAY, 0, 0, payload, 8);
}

static void h2_rst(struct h2 *h, uint32_t stream, uint32_t code) {
    unsigned char payload[4];
    put_u32(payload, code);
    h2_frame(h, FR_RST_STREAM, 0, stream, payload, 4);
}

/* The whole answer of a call: headers, the response message when status is OK, trailers; a call that
 * fails gets the trailers-only form (one HEADERS frame that ends the stream). */
static void grpc_answer(struct h2 *h, uint32_t stream, int status, const char *message, int serving_status) {
    struct sb block = {0};
    char code[16];
    hpack_put(&block, 8, NULL, "200"); /* :status */
    hpack_put(&block, 31, NULL, "application/grpc");
    if (status == GRPC_OK) {
        h2_frame(h, FR_HEADERS, FL_END_HEADERS, stream, block.p, block.n);
        unsigned char msg[7] = {0, 0, 0, 0, 2, 0x08, (unsigned char)serving_status}; /* HealthCheckResponse */
        h2_frame(h, FR_DATA, 0, stream, msg, sizeof msg);
        block.n = 0;
    }
    snprintf(code, sizeof code, "%d", status);
    hpack_put(&block, 0, "grpc-status", code);
    if (message) /* our messages are plain printable ASCII without '%': nothing to percent-encode */
        hpack_put(&block, 0, "grpc-message", message);
    h2_frame(h, FR_HEADERS, FL_END_HEADERS | FL_END_STREAM, stream, block.p, block.n);
    free(block.p);
}

/* A protobuf varint: at most 10 bytes (bits beyond 64 dropped, as protobuf parsers do). */
static bool pb_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t x = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (*p >= end)
            return false;
        unsigned char b = *(*p)++;
        x |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

enum { PB_MAX_DEPTH = 100 }; /* the nesting protobuf's parser allows */

/* The fields of a message, or of a group (`group` its field number) up to its END_GROUP. Unknown fields,
 * field 1 with another wire type among them, are skipped; only the message's own field 1 sets service. */
static bool pb_fields(const unsigned char **p, const unsigned char *end, uint64_t group, unsigned depth,
                      const unsigned char **service, size_t *service_len) {
    while (*p < end) {
        uint64_t tag, v;
        if (!pb_varint(p, end, &tag) || tag > UINT32_MAX || tag >> 3 == 0)
            return false;
        uint64_t field = tag >> 3;
        switch (tag & 7) {
        case 0:
            if (!pb_varint(p, end, &v))
                return false;
            break;
        case 1:
        case 5: {
            size_t width = (tag & 7) == 1 ? 8 : 4;
            if ((size_t)(end - *p) < width)
                return false;
            *p += width;
            break;
        }
        case 2:
            if (!pb_varint(p, end, &v) || v > (uint64_t)(end - *p))
                return false;
            if (group == 0 && field == 1) {
                *service = *p;
                *service_len = (size_t)v; /* the last occurrence wins */
            }
            *p += v;
            break;
        case 3:
            if (depth >= PB_MAX_DEPTH || !pb_fields(p, end, field, depth + 1, service, service_len))
                return false;
            break;
        case 4:
            return group != 0 && field == group;
        default:
            return false;
        }
    }
    return group == 0; /* a group without its END_GROUP does not parse */
}

/* Decode HealthCheckRequest (string service = 1) as protobuf's parser does; false when it would fail. */
static bool parse_health_request(const unsigned char *p, size_t n, const unsigned char **service, size_t *service_len) {
    *service = p;
    *service_len = 0;
    if (!pb_fields(&p, p + n, 0, 0, service, service_len))
        return false;
    /* a proto3 string must be valid UTF-8 */
    for (size_t i = 0; i < *service_len;) {
        unsigned char tmp[4] = {0, 0, 0, 0};
        size_t left = *service_len - i;
        memcpy(tmp, *service + i, left < 4 ? left : 4);
        uint32_t cp;
        int k = utf8_decode(tmp, &cp);
        if (k == 0 || (size_t)k > left)
            return false;
        i += (size_t)k;
    }
    return true;
}

static struct h2_stream *h2_find(struct h2 *h, uint32_t id) {
    for (int i = 0; i < H2_STREAMS; i++)
        if (h->streams[i].id == id)
            return &h->streams[i];
    return NULL;
}

static void h2_forget(struct h2_stream *s) {
    s->id = 0;
    s->body.n = 0;
}

/* The client has sent all of a call: answer it. */
static void h2_call(struct h2 *h, struct h2_stream *s, const struct config *cfg, bool healthy) {
    const unsigned char *b = (const unsigned char *)s->body.p;
    const unsigned char *service;
    size_t service_len;
    if (s->body.n < 5 || b[0] != 0 || get_u32(b + 1) != s->body.n - 5 ||
               !parse_health_request(b + 5, s->body.n - 5, &service, &service_len)) {
        /* no message, two, a compressed one (we announce no grpc-accept-encoding) or bad protobuf */
        grpc_answer(h, s->id, GRPC_INTERNAL, "grpc: error unmarshalling request", 0);
    } else if (service_len == 0 || (cfg->grpc_service && strlen(cfg->grpc_service) == service_len &&
                                    memcmp(cfg->grpc_service, service, service_len) == 0)) {
        grpc_answer(h, s->id, GRPC_OK, NULL, healthy ? 1 : 2); /* SERVING, NOT_SERVING */
    } else {
        grpc_answer(h, s->id, GRPC_NOT_FOUND, "unknown service", 0);
    }
    h2_forget(s);
}

/* A complete header block on `stream`. False: a connection error (GOAWAY already queued). */
static bool h2_headers(struct h2 *h, uint32_t stream, bool end_stream, const struct config *cfg, bool healthy) {
    char path[PATH_MAX_BYTES + 1];
    if (!hpack_decode(&h->table, (const unsigned char *)h->block.p, h->block.n, path)) {
        h2_goaway(h, H2_COMPRESSION_ERROR);
        return false;
    }
    h->block.n = 0;
    struct h2_stream *s = h2_find(h, stream);
    if (s) { /* trailers from the client */
        if (end_stream)
            h2_call(h, s, cfg, healthy);
        return true;
    }
    if (stream <= h->last_stream) /* a closed stream's headers, or ids going backwards */
        return true;
    h->last_stream = stream;
    s = h2_find(h, 0);
    if (!s) {
        h2_rst(h, stream, H2_REFUSED_STREAM);
        return true;
    }
    if (strcmp(path, CHECK_PATH) != 0) { /* Watch and anything else: refused at once, as gRPC servers do */
        grpc_answer(h, stream, GRPC_UNIMPLEMENTED, "Method not found!", 0);
        if (!end_stream)
            h2_rst(h, stream, H2_NO_ERROR);
        return true;
    }
    s->id = stream;
    s->body.n = 0;
    if (end_stream)
        h2_call(h, s, cfg, healthy);
    return true;
}

/* Strip the padding (and a HEADERS frame's priority fields) from a payload; false when malformed. */
static bool h2_unpad(unsigned flags, bool priority, const unsigned char **p, size_t *n) {
    size_t pad = 0;
    if (flags & FL_PADDED) {
        if (*n < 1)
            return false;
        pad = **p;
        (*p)++;
        (*n)--;
    }
    if (priority && (flags & FL_PRIORITY)) {
        if (*n < 5)
            return false;
        *p += 5;
        *n -= 5;
    }
    if (pad > *n)
        return false;
    *n -= pad;
    return true;
}

/* One frame. False: the connection ends (after the GOAWAY it queued, if any). */
static bool h2_frame_in(struct h2 *h, unsigned type, unsigned flags, uint32_t stream, const unsigned char *p,
                        size_t n, const struct config *cfg, bool healthy) {
    if (!h->settings_seen && type != FR_SETTINGS) {
        h2_goaway(h, H2_PROTOCOL_ERROR); /* the preface must be followed by SETTINGS */
        return false;
    }
    if (h->block_stream && (type != FR_CONTINUATION || stream != h->block_stream)) {
        h2_goaway(h, H2_PROTOCOL_ERROR);
        return false;
    }
    switch (type) {
    case FR_DATA: {
        uint32_t flow = (uint32_t)n; /* flow control counts the whole payload, padding too */
        if (stream == 0 || !h2_unpad(flags, false, &p, &n)) {
            h2_goaway(h, H2_PROTOCOL_ERROR);
            return false;
        }
        struct h2_stream *s = h2_find(h, stream);
        if (s) {
            sb_addn(&s->body, (const char *)p, n);
            const unsigned char *b = (const unsigned char *)s->body.p;
            if (s->body.n >= 5 && get_u32(b + 1) > GRPC_MESSAGE_MAX) {
                char why[96];
                snprintf(why, sizeof why, "SERVER: Received message larger than max (%" PRIu32 " vs. %d)",
                         get_u32(b + 1), GRPC_MESSAGE_MAX);
                grpc_answer(h, s->id, GRPC_RESOURCE_EXHAUSTED, why, 0);
                if (!(flags & FL_END_STREAM))
                    h2_rst(h, s->id, H2_NO_ERROR);
                h2_forget(s);
                s = NULL;
            } else if (s->body.n > 5 + GRPC_MESSAGE_MAX + 5) { /* more than one message: no use reading on */
                s->body.n = 1;
                s->body.p[0] = 1; /* reads as a compressed message: malformed for h2_call */
            }
        }
        h->unacked += flow;
        if (h->unacked >= 16384) { /* give the connection's window back, in bulk */
            unsigned char inc[4];
            put_u32(inc, h->unacked);
            h2_frame(h, FR_WINDOW_UPDATE, 0, 0, inc, 4);
            h->unacked = 0;
        }
        if (s && (flags & FL_END_STREAM))
            h2_call(h, s, cfg, healthy);
        return true;
    }
    case FR_HEADERS:
        if (stream == 0 || stream % 2 == 0 || !h2_unpad(flags, true, &p, &n)) {
            h2_goaway(h, H2_PROTOCOL_ERROR);
            return false;
        }
        h->block.n = 0;
        h->block_ends_stream = flags & FL_END_STREAM;
        /* fall through */
    case FR_CONTINUATION:
        if (type == FR_CONTINUATION && !h->block_stream) {
            h2_goaway(h, H2_PROTOCOL_ERROR);
            return false;
        }
        if (h->block.n + n > H2_BLOCK_MAX) {
            h2_goaway(h, H2_ENHANCE_YOUR_CALM);
            return false;
        }
        sb_addn(&h->block, (const char *)p, n);
        h->block_stream = stream;
        if (!(flags & FL_END_HEADERS))
            return true;
        h->block_stream = 0;
        return h2_headers(h, stream, h->block_ends_stream, cfg, healthy);
    case FR_RST_STREAM: {
        if (stream == 0 || n != 4) {
            h2_goaway(h, H2_PROTOCOL_ERROR);
            return false;
        }
        struct h2_stream *s = h2_find(h, stream);
        if (s)
            h2_forget(s);
        return true;
    }
    case FR_SETTINGS:
        if (stream != 0 || n % 6 != 0 || ((flags & FL_ACK) && n != 0)) {
            h2_goaway(h, n % 6 ? H2_FRAME_SIZE_ERROR : H2_PROTOCOL_ERROR);
            return false;
        }
        if (!(flags & FL_ACK)) {
            /* nothing the client sets matters to answers this small: acknowledge it */
            h2_frame(h, FR_SETTINGS, FL_ACK, 0, NULL, 0);
            h->settings_seen = true;
        } else if (!h->settings_seen) {
            h2_goaway(h, H2_PROTOCOL_ERROR);
            return false;
        }
        return true;
    case FR_PING:
        if (stream != 0 || n != 8) {
            h2_goaway(h, n != 8 ? H2_FRAME_SIZE_ERROR : H2_PROTOCOL_ERROR);
            return false;
        }
        if (!(flags & FL_ACK))
            h2_frame(h, FR_PING, FL_ACK, 0, p, 8);
        return true;
    case FR_PUSH_PROMISE: /* only servers push */
        h2_goaway(h, H2_PROTOCOL_ERROR);
        return false;
    default: /* PRIORITY, GOAWAY, WINDOW_UPDATE and unknown types */
        return true;
    }
}

/* Everything read so far. False: the connection ends. */
static bool h2_input(struct h2 *h, const struct config *cfg, bool healthy) {
    size_t at = 0;
    if (!h->preface_seen) {
        size_t want = sizeof H2_PREFACE - 1, have = h->in_len < want ? h->in_len : want;
        if (memcmp(h->in, H2_PREFACE, have) != 0)
            return false; /* not HTTP/2 with prior knowledge: not even a GOAWAY */
        if (h->in_len < want)
            return true;
        h->preface_seen = true;
        unsigned char settings[6] = {0, 3, 0, 0, 0, H2_STREAMS}; /* SETTINGS_MAX_CONCURRENT_STREAMS */
        h2_frame(h, FR_SETTINGS, 0, 0, settings, sizeof settings);
        at = want;
    }
    bool ok = true;
    while (ok && h->in_len - at >= 9) {
        const unsigned char *f = h->in + at;
        size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
        if (len > H2_FRAME_MAX) {
            h2_goaway(h, H2_FRAME_SIZE_ERROR);
            return false;
        }
        if (h->in_len - at < 9 + len)
            break;
        ok = h2_frame_in(h, f[3], f[4], get_u32(f + 5) & 0x7FFFFFFFu, f + 9, len, cfg, healthy);
        at += 9 + len;
    }
    memmove(h->in, h->in + at, h->in_len - at);
    h->in_len -= at;
    return ok;
}

/* ---------------------------------------------------------------------------------------------- */
/* connections                                                                                    */

enum { MAX_CONNS = 64, REQ_MAX = 4096 };
enum conn_state { C_FREE, C_READING, C_DRAINING, C_HANGING, C_H2 };
enum port_kind { P_HTTP, P_TCP, P_GRPC };
struct conn {
    enum conn_state state;
    int fd;
    size_t len;
    int64_t deadline;
    struct h2 *h2;
    char buf[REQ_MAX];
};
static struct conn conns[MAX_CONNS];

static void conn_close(struct conn *c) {
    close(c->fd);
    if (c->h2)
        h2_free(c->h2);
    c->h2 = NULL;
    c->state = C_FREE;
}

static void http_respond(struct conn *c, bool healthy) {
    struct sb r = {0};
    if (!http_answer(c->buf, c->len, healthy, &r)) {
        /* /hang: no answer, and no deadline; the client's close (or the process's end) ends it */
        c->state = C_HANGING;
        c->deadline = NEVER;
        return;
    }
    ssize_t w = send(c->fd, r.p, r.n, MSG_NOSIGNAL);
    (void)w;
    free(r.p);
    shutdown(c->fd, SHUT_WR);
    c->state = C_DRAINING;
    c->deadline = mono_ns() + NS_PER_S;
}

static bool request_complete(const struct conn *c) {
    return memmem(c->buf, c->len, "\r\n\r\n", 4) || memmem(c->buf, c->len, "\n\n", 2) || c->len == REQ_MAX;
}

/* Send what an HTTP/2 connection has queued; false when the client is gone or does not read. */
static bool h2_flush(struct conn *c) {
    struct h2 *h = c->h2;
    size_t sent = 0;
    while (sent < h->out.n) {
        ssize_t w = send(c->fd, h->out.p + sent, h->out.n - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w <= 0)
            return false;
        sent += (size_t)w;
    }
    if (sent) {
        memmove(h->out.p, h->out.p + sent, h->out.n - sent);
        h->out.n -= sent;
    }
    return h->out.n <= H2_OUT_MAX;
}

static void h2_readable(struct conn *c, const struct config *cfg, bool healthy) {
    struct h2 *h = c->h2;
    for (;;) {
        ssize_t n = recv(c->fd, h->in + h->in_len, sizeof h->in - h->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        h->in_len += (size_t)n;
        if (!h2_input(h, cfg, healthy)) {
            /* a protocol error: what is queued (the GOAWAY) goes out as far as it can, then the end */
            h2_flush(c);
            conn_close(c);
            return;
        }
        if (h->settings_seen)
            c->deadline = NEVER; /* a real HTTP/2 client: it may keep the connection for more calls */
    }
    if (!h2_flush(c))
        conn_close(c);
}

static void conn_readable(struct conn *c, const struct config *cfg, bool healthy) {
    if (c->state == C_H2) {
        h2_readable(c, cfg, healthy);
        return;
    }
    for (;;) {
        char scratch[REQ_MAX];
        char *dst = c->state == C_READING ? c->buf + c->len : scratch;
        size_t room = c->state == C_READING ? REQ_MAX - c->len : sizeof scratch;
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (c->state == C_READING && c->len > 0 && n == 0) {
                http_respond(c, healthy);
                if (c->state == C_HANGING)
                    continue; /* the client has closed its side already: read the EOF again */
            }
            conn_close(c);
            return;
        }
        if (c->state == C_READING) {
            c->len += (size_t)n;
            if (request_complete(c))
                http_respond(c, healthy);
        }
    }
}

static void accept_all(int lfd, enum port_kind kind, int64_t now) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        if (kind == P_TCP) {
            close(fd);
            continue;
        }
        struct conn *slot = NULL;
        for (int i = 0; i < MAX_CONNS && !slot; i++)
            if (conns[i].state == C_FREE)
                slot = &conns[i];
        struct h2 *h = slot && kind == P_GRPC ? h2_new() : NULL;
        if (!slot || (kind == P_GRPC && !h)) {
            close(fd);
            continue;
        }
        if (kind == P_GRPC) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        slot->state = kind == P_GRPC ? C_H2 : C_READING;
        slot->h2 = h;
        slot->fd = fd;
        slot->len = 0;
        slot->deadline = now + 10 * NS_PER_S; /* to send a request (HTTP) or the preface and SETTINGS */
    }
}

/* --termination-message: written as the process ends by itself or after SIGTERM (the kubelet mounts the file). */
static void write_termination_message(const struct config *cfg) {
    if (!cfg->termination_message)
        return;
    const char *path = cfg->termination_message_path;
    size_t n = strlen(cfg->termination_message);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0;
    int saved = errno;
    if (ok) {
        ok = write(fd, cfg->termination_message, n) == (ssize_t)n;
        saved = errno;
        ok = close(fd) == 0 && ok;
    }
    if (!ok) {
        struct sb msg = {0};
        sb_addf(&msg, HELPER ": cannot write %s: %s\n", path, strerror(saved));
        put(2, msg.p);
        free(msg.p);
    }
}

static int main_mode(int n, char **flags, int64_t start) {
    int64_t start_real = clock_ns(CLOCK_REALTIME);
    /* SIGTERM and SIGCHLD wait (blocked) until the loop looks for them in ppoll(); one arriving
     * before the handlers are in place is kept pending, or dropped by --ignore-sigterm's SIG_IGN. */
    sigset_t blocked, run_mask;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &run_mask);
    sigdelset(&run_mask, SIGTERM);
    sigdelset(&run_mask, SIGCHLD);
    struct config cfg;
    char *err = parse_flags(n, flags, &cfg);
    if (err) {
        struct sb msg = {0};
        sb_add(&msg, HELPER ": ");
        sb_add(&msg, err);
        sb_addc(&msg, '\n');
        sb_add(&msg, USAGE);
        sb_addc(&msg, '\n');
        write_all(2, msg.p, msg.n);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = cfg.ignore_sigterm ? SIG_IGN : on_term;
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    if (!write_state(start, start_real, &cfg) && (cfg.ready_after_ns > 0 || cfg.has_unhealthy_after)) {
        struct sb msg = {0};
        sb_addf(&msg, HELPER ": cannot write %s: %s (khelper check answers as for a fresh start)\n", state_path(),
                strerror(errno));
        put(2, msg.p);
        free(msg.p);
    }

    /* CPU: this loop burns up to one core; each further (part of a) core is a helper process, as many
     * as there are further CPUs to run them (more could not burn more). */
    uint64_t extra = cfg.cpu_millicores > 1000 ? cfg.cpu_millicores - 1000 : 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    for (long burners = 1; extra > 0 && burners < cpus && burners < 1024; burners++) {
        spawn_burner(extra > 1000 ? 1000 : extra);
        extra -= extra > 1000 ? 1000 : extra;
    }
    int64_t busy_ns = (int64_t)(cfg.cpu_millicores > 1000 ? 1000 : cfg.cpu_millicores) * CPU_PERIOD_NS / 1000;

    int http_fd = cfg.has_http_port ? listen_on(&cfg.http_port) : -1;
    int tcp_fd = cfg.has_tcp_port ? listen_on(&cfg.tcp_port) : -1;
    int grpc_fd = cfg.has_grpc_port ? listen_on(&cfg.grpc_port) : -1;
    write_disk(cfg.disk_mib);

    /* The log line buffer: "<text> " then the number, then the padding and a newline. */
    size_t text_bytes = strlen(cfg.log_text), text_chars = py_len(cfg.log_text);
    size_t pad_room = cfg.log_line_bytes > text_chars ? (size_t)cfg.log_line_bytes - text_chars : 0;
    char *line = NULL;
    if (cfg.log_rate > 0) {
        line = pad_room < SIZE_MAX / 2 - text_bytes ? malloc(text_bytes + 1 + 24 + pad_room + 2) : NULL;
        if (!line) {
            put(2, HELPER ": cannot allocate a log line of that size\n");
            return 1;
        }
        memcpy(line, cfg.log_text, text_bytes);
        line[text_bytes] = ' ';
    }
    uint64_t written = 0;
    bool term_seen = false;
    int64_t term_at = 0;
    size_t mem_full = memory_bytes_at(&cfg, NEVER / 2);

    for (;;) {
        int64_t now = mono_ns();
        if (got_chld) {
            got_chld = 0;
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
        }
        if (got_term && !term_seen) {
            term_seen = true;
            term_at = now;
        }
        /* How this process ends: the earliest of exiting by itself and exiting after SIGTERM. */
        bool ending = false;
        int64_t end_at = NEVER;
        int end_code = 0;
        if (cfg.has_exit_after) {
            ending = true;
            end_at = add_sat(start, cfg.exit_after_ns);
            end_code = (int)cfg.exit_code;
        }
        if (term_seen && !cfg.ignore_sigterm) {
            int64_t t = add_sat(term_at, cfg.sigterm_delay_ns);
            if (!ending || t < end_at) {
                ending = true;
                end_at = t;
                end_code = (int)cfg.sigterm_exit_code;
            }
        }
        bool dying = ending && end_at <= now;
        /* Write the lines due by now (not those due at or after the exit), a bounded batch at a time. */
        int64_t horizon = ending && end_at - 1 < now ? end_at - 1 : now;
        int64_t next = NEVER;
        if (cfg.log_rate > 0) {
            unsigned batch = 0;
            while (!cfg.has_log_count || written < cfg.log_count) {
                double offset = (double)written * 1e9 / cfg.log_rate;
                int64_t due = offset < 9e18 ? add_sat(start, (int64_t)offset) : NEVER;
                if (due > horizon) {
                    next = due;
                    break;
                }
                if (!dying && ++batch > 1000) {
                    next = now;
                    break;
                }
                uint64_t number = written + 1;
                size_t len = text_bytes + 1;
                len += (size_t)sprintf(line + len, "%" PRIu64, number);
                size_t chars = text_chars + (len - text_bytes);
                if (cfg.log_line_bytes > chars) {
                    size_t pad = (size_t)cfg.log_line_bytes - chars;
                    line[len] = ' ';
                    memset(line + len + 1, 'x', pad - 1);
                    len += pad;
                }
                line[len++] = '\n';
                int fd = 1;
                if (strcmp(cfg.log_stream, "stderr") == 0 || (strcmp(cfg.log_stream, "both") == 0 && number % 2 == 0))
                    fd = 2;
                write_all(fd, line, len);
                written = number;
            }
        }
        if (dying) {
            write_termination_message(&cfg);
            exit(end_code);
        }
        if (ending && end_at < next)
            next = end_at;

        /* Memory: all at once, or growing at the rate (checked every 10 ms at most); at most 64 MiB a
         * turn of the loop, so that a large allocation does not hold up the log lines and the servers. */
        if (mem.touched < mem_full && !mem.failed) {
            size_t target = memory_bytes_at(&cfg, now - start), step = (size_t)64 << 20;
            if (target > mem.touched)
                grow_memory_to(target - mem.touched > step ? mem.touched + step : target);
            if (mem.touched < target && !mem.failed)
                next = now;
            else if (mem.touched < mem_full && !mem.failed && cfg.memory_mib_per_second > 0) {
                double secs = (double)(mem.touched + PAGE) / (cfg.memory_mib_per_second * MIB);
                int64_t at = secs < 9e9 ? start + (int64_t)(secs * 1e9) + 1 : NEVER;
                if (at < now + 10000000)
                    at = now + 10000000;
                if (at < next)
                    next = at;
            }
        }

        struct pollfd pfds[3 + MAX_CONNS];
        struct conn *owners[3 + MAX_CONNS];
        nfds_t nfds = 0;
        int listeners[3] = {http_fd, tcp_fd, grpc_fd};
        for (int i = 0; i < 3; i++) {
            if (listeners[i] < 0)
                continue;
            pfds[nfds] = (struct pollfd){.fd = listeners[i], .events = POLLIN};
            owners[nfds++] = NULL;
        }
        for (int i = 0; i < MAX_CONNS; i++) {
            if (conns[i].state == C_FREE)
                continue;
            if (conns[i].deadline <= now) {
                conn_close(&conns[i]);
                continue;
            }
            if (conns[i].deadline < next)
                next = conns[i].deadline;
            short events = POLLIN | (conns[i].h2 && conns[i].h2->out.n ? POLLOUT : 0);
            pfds[nfds] = (struct pollfd){.fd = conns[i].fd, .events = events};
            owners[nfds++] = &conns[i];
        }

        /* CPU duty cycle: busy for the first part of every period, polling without sleeping. */
        bool busy = false;
        int64_t busy_until = NEVER;
        if (busy_ns >= CPU_PERIOD_NS) {
            busy = true;
        } else if (busy_ns > 0) {
            int64_t phase = (now - start) % CPU_PERIOD_NS;
            if (phase < busy_ns) {
                busy = true;
                busy_until = now - phase + busy_ns;
            } else if (now - phase + CPU_PERIOD_NS < next) {
                next = now - phase + CPU_PERIOD_NS;
            }
        }

        struct timespec timeout, *tp = NULL;
        if (busy || next <= now) {
            timeout = (struct timespec){0, 0};
            tp = &timeout;
        } else if (next != NEVER) {
            int64_t d = next - now;
            timeout = (struct timespec){(time_t)(d / NS_PER_S), (long)(d % NS_PER_S)};
            tp = &timeout;
        }
        int ready = ppoll(pfds, nfds, tp, &run_mask);
        if (ready > 0) {
            /* health is judged when the request is read: ppoll() may have slept across --unhealthy-after */
            int64_t t = mono_ns();
            bool healthy = !(cfg.has_unhealthy_after && t - start >= cfg.unhealthy_after_ns);
            for (nfds_t i = 0; i < nfds; i++) {
                if (!pfds[i].revents)
                    continue;
                struct conn *c = owners[i];
                if (!c) {
                    accept_all(pfds[i].fd, pfds[i].fd == http_fd ? P_HTTP : pfds[i].fd == tcp_fd ? P_TCP : P_GRPC, t);
                } else if (c->state != C_FREE && c->h2 && (pfds[i].revents & POLLOUT) && !h2_flush(c)) {
                    conn_close(c);
                } else if (c->state != C_FREE && (pfds[i].revents & ~POLLOUT)) {
                    conn_readable(c, &cfg, healthy);
                }
            }
        } else if (ready == 0 && busy) {
            int64_t until = now + 500000; /* spin up to 0.5 ms between looks at the descriptors */
            if (busy_until < until)
                until = busy_until;
            if (next < until)
                until = next;
            while (mono_ns() < until) {
            }
        }
    }
}

int main(int argc, char **argv) {
    int64_t start = mono_ns();
    if (getpid() != 1 && argc >= 2 && is_subcommand_word(argv[1]))
        return exec_main(argc, argv);
    return main_mode(argc - 1, argv + 1, start);
}
