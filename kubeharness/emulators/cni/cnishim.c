/* cnishim: the kubeharness-cni executable's fast path, installed by `kubeharness cni install`.
 *
 * A runtime executes this as the plugin. It hands the invocation (cwd, umask, environment, stdin) to
 * the fork server (`kubeharness cni serve`, kubeharness/emulators/cni/forkserver.py, which documents the
 * protocol) over the unix socket KH_SOCKET, copies the plugin's stdout and stderr to its own and ends as
 * the plugin ended: the same exit code, or death by the same signal. If the server is not there (or
 * refuses this user) it execs KH_FALLBACK, the Python entry point, with stdin untouched: slower, never
 * wrong. A failure of the shim itself is a CNI error document (code 104, INTERNAL) on stdout, exit 1.
 * Both paths are baked in at build time: gcc -DKH_SOCKET='"..."' -DKH_FALLBACK='"..."'.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(KH_SOCKET) || !defined(KH_FALLBACK)
#error "build with -DKH_SOCKET='\"/path/cni.sock\"' -DKH_FALLBACK='\"/path/kubeharness-cni\"'"
#endif
#define PROTOCOL "kubeharness-cni/1"
#define GUARD "KUBEHARNESS_CNI_SHIM_FALLBACK"
#define INTERNAL 104

extern char **environ;

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* A CNI error result, printed as the Python plugin prints one (indent 4). */
static void fail(const char *msg, const char *details) {
    printf("{\n    \"cniVersion\": \"1.1.0\",\n    \"code\": %d,\n    \"msg\": ", INTERNAL);
    json_string(msg);
    printf(",\n    \"details\": ");
    json_string(details);
    printf("\n}\n");
    fflush(stdout);
    exit(1);
}

static void fallback(char **argv) {
    if (getenv(GUARD)) fail("kubeharness-cni shim: the fallback is the shim itself", KH_FALLBACK);
    setenv(GUARD, "1", 1);
    argv[0] = (char *)KH_FALLBACK;
    execv(KH_FALLBACK, argv);
    fail("kubeharness-cni shim: cannot run the plugin " KH_FALLBACK, strerror(errno));
}

static int read_full(int fd, void *buf, size_t n) { /* 1: all read, 0: end of stream or error */
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        got += (size_t)r;
    }
    return 1;
}

static int write_full(int fd, const void *buf, size_t n, int is_socket) {
    for (size_t done = 0; done < n;) {
        ssize_t w = is_socket ? send(fd, (const char *)buf + done, n - done, MSG_NOSIGNAL)
                              : write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        done += (size_t)w;
    }
    return 1;
}

static int read_frame_header(int fd, char *kind, uint32_t *len) {
    unsigned char h[5];
    if (!read_full(fd, h, 5)) return 0;
    *kind = (char)h[0];
    *len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    return 1;
}

/* Growable request buffer. */
static char *req;
static size_t req_len, req_cap;

static void append(const void *data, size_t n) {
    if (req_len + n > req_cap) {
        while (req_len + n > req_cap) req_cap = req_cap ? req_cap * 2 : 65536;
        if (!(req = realloc(req, req_cap))) fail("kubeharness-cni shim: out of memory", "");
    }
    memcpy(req + req_len, data, n);
    req_len += n;
}

static void append_u32(uint32_t v) {
    unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
    append(b, 4);
}

static void append_blob(const char *data, size_t n) {
    append_u32((uint32_t)n);
    append(data, n);
}

int main(int argc, char **argv) {
    (void)argc;
    if (getenv(GUARD)) fallback(argv); /* fails at once: we were exec'd as our own fallback */
    for (int fd = 0; fd < 3; fd++) /* a closed stdio must not become the socket: /dev/null stands in */
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) fail("kubeharness-cni shim: no stdio", "");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || strlen(KH_SOCKET) >= sizeof addr.sun_path) fallback(argv);
    strcpy(addr.sun_path, KH_SOCKET);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) fallback(argv);
    char kind, hello[64];
    uint32_t len;
    if (!read_frame_header(sock, &kind, &len) || kind != 'h' || len != strlen(PROTOCOL) ||
        !read_full(sock, hello, len) || memcmp(hello, PROTOCOL, len) != 0) {
        close(sock); /* refused, or not our server: the slow path, stdin still unread */
        fallback(argv);
    }

    mode_t mask = umask(0);
    umask(mask);
    append_u32((uint32_t)mask);
    char cwd[4096];
    const char *here = getcwd(cwd, sizeof cwd) ? cwd : "";
    append_blob(here, strlen(here));
    size_t env_at = req_len;
    append_u32(0);
    for (char **e = environ; *e; e++) append(*e, strlen(*e) + 1);
    uint32_t env_len = (uint32_t)(req_len - env_at - 4);
    unsigned char b[4] = {env_len >> 24, env_len >> 16, env_len >> 8, env_len};
    memcpy(req + env_at, b, 4);
    size_t stdin_at = req_len;
    append_u32(0);
    char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* end, or no stdin at all (EBADF): the plugin reads what there is */
        append(chunk, (size_t)r);
    }
    uint32_t in_len = (uint32_t)(req_len - stdin_at - 4);
    unsigned char c[4] = {in_len >> 24, in_len >> 16, in_len >> 8, in_len};
    memcpy(req + stdin_at, c, 4);
    if (!write_full(sock, req, req_len, 1)) fail("kubeharness-cni shim: the fork server went away", strerror(errno));

    while (read_frame_header(sock, &kind, &len)) {
        if (kind == 'o' || kind == 'e') {
            int fd = kind == 'o' ? 1 : 2;
            while (len > 0) {
                size_t n = len < sizeof chunk ? len : sizeof chunk;
                if (!read_full(sock, chunk, n)) goto lost;
                write_full(fd, chunk, n, 0);
                len -= (uint32_t)n;
            }
        } else if ((kind == 'x' || kind == 'k') && len == 4) {
            unsigned char v[4];
            if (!read_full(sock, v, 4)) break;
            int code = (int)((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3]);
            if (kind == 'x') return code;
            struct rlimit none = {0, 0}; /* die as the plugin died, without a core of the shim */
            setrlimit(RLIMIT_CORE, &none);
            signal(code, SIG_DFL);
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, code);
            sigprocmask(SIG_UNBLOCK, &set, NULL);
            raise(code);
            return 128 + code;
        } else {
            fail("kubeharness-cni shim: unexpected frame from the fork server", "");
        }
    }
lost:
    fail("kubeharness-cni shim: the fork server went away before the plugin ended", KH_SOCKET);
    return 1;
}
