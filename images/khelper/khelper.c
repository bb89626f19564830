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
 *   --log-line-bytes, one write() per line; grows memory; burns CPU in a duty cycle; serves HTTP and
 *   TCP; and exits after --exit-after, or --sigterm-delay after SIGTERM. Lines due at or after the
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
    "[--memory-mib=M] [--memory-mib-per-second=R] [--cpu-millicores=N] [--disk-mib=N] [--ignore-sigterm] "
    "[--sigterm-exit-code=N] [--sigterm-delay=D]";

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
    bool has_http_port, has_tcp_port;
    struct pyint http_port, tcp_port;
    double memory_mib, memory_mib_per_second;
    uint64_t cpu_millicores;
    double disk_mib;
    bool ignore_sigterm;
    uint64_t sigterm_exit_code;
    const char *sigterm_exit_code_digits;
    int64_t sigterm_delay_ns;
};

enum kind { K_INT, K_FLOAT, K_DURATION, K_STR, K_BOOL };

enum flag_id {
    F_EXIT_AFTER, F_EXIT_CODE, F_LOG_RATE, F_LOG_COUNT, F_LOG_STREAM, F_LOG_LINE_BYTES, F_LOG_TEXT, F_READY_AFTER,
    F_UNHEALTHY_AFTER, F_HTTP_PORT, F_TCP_PORT, F_MEMORY_MIB, F_MEMORY_MIB_PER_SECOND, F_CPU_MILLICORES, F_DISK_MIB,
    F_IGNORE_SIGTERM, F_SIGTERM_EXIT_CODE, F_SIGTERM_DELAY,
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
    {"--memory-mib", K_FLOAT, F_MEMORY_MIB},
    {"--memory-mib-per-second", K_FLOAT, F_MEMORY_MIB_PER_SECOND},
    {"--cpu-millicores", K_INT, F_CPU_MILLICORES},
    {"--disk-mib", K_FLOAT, F_DISK_MIB},
    {"--ignore-sigterm", K_BOOL, F_IGNORE_SIGTERM},
    {"--sigterm-exit-code", K_INT, F_SIGTERM_EXIT_CODE},
    {"--sigterm-delay", K_DURATION, F_SIGTERM_DELAY},
};

/* Parse the flags into cfg; NULL on success, else the message (without the "khelper: " prefix). */
static char *parse_flags(int n, char **argv, struct config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->log_stream = "stdout";
    cfg->log_text = "line";
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
        case F_MEMORY_MIB: cfg->memory_mib = real; break;
        case F_MEMORY_MIB_PER_SECOND: cfg->memory_mib_per_second = real; break;
        case F_CPU_MILLICORES: cfg->cpu_millicores = num.value; break;
        case F_DISK_MIB: cfg->disk_mib = real; break;
        case F_SIGTERM_EXIT_CODE:
            cfg->sigterm_exit_code = num.value;
            cfg->sigterm_exit_code_digits = num.digits;
            break;
        case F_SIGTERM_DELAY: cfg->sigterm_delay_ns = ns; break;
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

/* Connections being served. */
enum { MAX_CONNS = 64, REQ_MAX = 4096 };
enum conn_state { C_FREE, C_READING, C_DRAINING };
struct conn {
    enum conn_state state;
    int fd;
    size_t len;
    int64_t deadline;
    char buf[REQ_MAX];
};
static struct conn conns[MAX_CONNS];

static void conn_close(struct conn *c) {
    close(c->fd);
    c->state = C_FREE;
}

static void http_respond(struct conn *c, bool healthy) {
    bool head = c->len >= 5 && memcmp(c->buf, "HEAD ", 5) == 0;
    const char *status = healthy ? "200 OK" : "503 Service Unavailable";
    const char *body = healthy ? "ok\n" : "unhealthy\n";
    struct sb r = {0};
    sb_addf(&r, "HTTP/1.0 %s\r\n", status);
    sb_addf(&r, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
            strlen(body));
    if (!head)
        sb_add(&r, body);
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

static void conn_readable(struct conn *c, bool healthy) {
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
            if (c->state == C_READING && c->len > 0 && n == 0)
                http_respond(c, healthy);
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

static void accept_all(int lfd, bool http, int64_t now) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        if (!http) {
            close(fd);
            continue;
        }
        struct conn *slot = NULL;
        for (int i = 0; i < MAX_CONNS && !slot; i++)
            if (conns[i].state == C_FREE)
                slot = &conns[i];
        if (!slot) {
            close(fd);
            continue;
        }
        slot->state = C_READING;
        slot->fd = fd;
        slot->len = 0;
        slot->deadline = now + 10 * NS_PER_S;
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
        if (dying)
            exit(end_code);
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

        bool healthy = !(cfg.has_unhealthy_after && now - start >= cfg.unhealthy_after_ns);
        struct pollfd pfds[2 + MAX_CONNS];
        struct conn *owners[2 + MAX_CONNS];
        nfds_t nfds = 0;
        if (http_fd >= 0) {
            pfds[nfds] = (struct pollfd){.fd = http_fd, .events = POLLIN};
            owners[nfds++] = NULL;
        }
        if (tcp_fd >= 0) {
            pfds[nfds] = (struct pollfd){.fd = tcp_fd, .events = POLLIN};
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
            pfds[nfds] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
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
            int64_t t = mono_ns();
            for (nfds_t i = 0; i < nfds; i++) {
                if (!pfds[i].revents)
                    continue;
                if (owners[i])
                    conn_readable(owners[i], healthy);
                else
                    accept_all(pfds[i].fd, pfds[i].fd == http_fd, t);
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
