"""The cffi binding of libnghttp2 for the HTTP/2 downstream codec: its declarations and the C glue
compiled with them (API, out-of-line mode) by `pysidecar native build` into the build directory,
beside the mypyc modules (native_build.py). Nothing here runs in a proxy process: the compiled
module `_pysidecar_nghttp2` is loaded by `nghttp2_lib`.

Promises:
- `build(into)` compiles the module against the system's libnghttp2 (Debian: libnghttp2-dev,
  installed by scripts/bootstrap.sh) and puts its shared library in `into`; it raises when the
  compiler or the headers are missing (the caller decides: the h2 codec is the fallback).
- The C glue keeps Python out of the per-header and per-frame work: a `ps_conn` collects each
  request header block (name and value bytes, ended offsets) in C, up to one field past the
  HCM's limits (the codec's `over_limits` then resets the stream; a block is never unbounded);
  frame, DATA, stream-close and DATA-source callbacks are one call into Python each, with plain
  integers; `ps_send` joins every frame nghttp2 has queued into one buffer (one write per
  turn, the caller empties `olen`); `ps_recv` frames what a read queued at once, so that a
  GOAWAY nghttp2 chose itself (an HPACK error, which mem_recv does not report) is known
  (`goaway`, `goaway_code`); `ps_submit_headers` builds the nghttp2_nv array from one joined buffer.
- The session is a server (nghttp2_session_server_new2) with `no_auto_window_update` (the codec
  acknowledges request DATA only once handed on: nghttp2_session_consume) and
  `no_http_messaging` (the HTTP rules are header_validation's, so the answers stay Envoy's).
"""

from __future__ import annotations

from pathlib import Path

MODULE = "_pysidecar_nghttp2"

# One connection's C state, declared to cffi and compiled alike.
_PS_CONN = """
typedef struct {
    nghttp2_session *session;
    void *handle;
    uint8_t *hbuf; size_t hlen; size_t hcap;
    size_t *hoff; size_t hn; size_t hcapn;
    size_t hbytes; size_t size_limit; size_t count_limit;
    uint8_t *obuf; size_t olen; size_t ocap;
    int goaway; uint32_t goaway_code;
} ps_conn;
"""

CDEF = """
typedef struct nghttp2_session nghttp2_session;
""" + _PS_CONN + """
extern "Python" int ps_on_frame(void *, int, int, int32_t, int, uint32_t);
extern "Python" int ps_on_data(void *, int32_t, const uint8_t *, size_t);
extern "Python" int ps_on_close(void *, int32_t, uint32_t);
extern "Python" ssize_t ps_on_read(void *, int32_t, uint8_t *, size_t, uint32_t *);

ps_conn *ps_conn_new(void *handle, size_t size_limit, size_t count_limit);
void ps_conn_del(ps_conn *c);
ssize_t ps_send(ps_conn *c);
ssize_t ps_recv(ps_conn *c, const uint8_t *in, size_t inlen);
int ps_submit_headers(ps_conn *c, int end, int32_t sid, const uint8_t *buf, const size_t *lens, size_t n);
int ps_submit_trailer(ps_conn *c, int32_t sid, const uint8_t *buf, const size_t *lens, size_t n);
int ps_submit_data(ps_conn *c, int32_t sid);
int32_t ps_window(ps_conn *c, int32_t sid, size_t stream_queued, size_t queued);
int ps_stream_open(ps_conn *c, int32_t sid);
int ps_settings(ps_conn *c, uint32_t streams, uint32_t window, uint32_t header_list);

ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id, uint32_t error_code);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id, uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_submit_window_update(nghttp2_session *session, uint8_t flags, int32_t stream_id, int32_t window_size_increment);
const char *nghttp2_strerror(int lib_error_code);

#define NGHTTP2_ERR_DEFERRED ...
#define NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE ...
#define NGHTTP2_ERR_CALLBACK_FAILURE ...
#define NGHTTP2_ERR_FLOODED ...
#define NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ...
#define NGHTTP2_DATA_FLAG_EOF ...
#define NGHTTP2_DATA_FLAG_NO_END_STREAM ...
"""

SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>
""" + _PS_CONN + r"""
static int ps_on_frame(void *, int, int, int32_t, int, uint32_t);
static int ps_on_data(void *, int32_t, const uint8_t *, size_t);
static int ps_on_close(void *, int32_t, uint32_t);
static ssize_t ps_on_read(void *, int32_t, uint8_t *, size_t, uint32_t *);

static int ps_grow(void **p, size_t *cap, size_t need, size_t unit) {
    size_t n = *cap ? *cap : 16;
    void *q;
    while (n < need) n *= 2;
    if (n == *cap) return 0;
    q = realloc(*p, n * unit);
    if (q == NULL) return -1;
    *p = q; *cap = n;
    return 0;
}

static int cb_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    ps_conn *c = u;
    (void)s; (void)f;
    c->hlen = c->hn = c->hbytes = 0;
    return 0;
}

static int cb_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *u) {
    ps_conn *c = u;
    (void)s; (void)f; (void)flags;
    /* Up to one field past a limit: enough for the codec to see the block is over it. */
    if (c->hn > c->count_limit || c->hbytes > c->size_limit) return 0;
    if (ps_grow((void **)&c->hbuf, &c->hcap, c->hlen + namelen + valuelen, 1) ||
        ps_grow((void **)&c->hoff, &c->hcapn, 2 * (c->hn + 1), sizeof(size_t)))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(c->hbuf + c->hlen, name, namelen);
    c->hlen += namelen;
    c->hoff[2 * c->hn] = c->hlen;
    memcpy(c->hbuf + c->hlen, value, valuelen);
    c->hlen += valuelen;
    c->hoff[2 * c->hn + 1] = c->hlen;
    c->hn++;
    c->hbytes += namelen + valuelen;
    return 0;
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    ps_conn *c = u;
    int cat = 0;
    uint32_t code = 0;
    int rv;
    (void)s;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS: cat = f->headers.cat; break;
    case NGHTTP2_RST_STREAM: code = f->rst_stream.error_code; break;
    case NGHTTP2_GOAWAY: code = f->goaway.error_code; break;
    case NGHTTP2_WINDOW_UPDATE: code = (uint32_t)f->window_update.window_size_increment; break;
    case NGHTTP2_DATA: if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0; break;
    case NGHTTP2_SETTINGS: if (f->hd.flags & NGHTTP2_FLAG_ACK) return 0; break;
    case NGHTTP2_PING: case NGHTTP2_PRIORITY: return 0;
    default: break;
    }
    if (f->hd.type == NGHTTP2_RST_STREAM && nghttp2_session_find_stream(s, f->hd.stream_id) == NULL)
        return 0;  /* a stream already closed on our side: nothing to tell */
    rv = ps_on_frame(c->handle, f->hd.type, f->hd.flags, f->hd.stream_id, cat, code);
    if (f->hd.type == NGHTTP2_HEADERS) c->hlen = c->hn = c->hbytes = 0;
    return rv;
}

static int cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *u) {
    (void)s; (void)flags;
    return ps_on_data(((ps_conn *)u)->handle, sid, data, len);
}

static int cb_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *u) {
    (void)s;
    return ps_on_close(((ps_conn *)u)->handle, sid, code);
}

static int cb_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    ps_conn *c = u;
    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY && !c->goaway) {
        c->goaway = 1;
        c->goaway_code = f->goaway.error_code;
    }
    return 0;
}

static ssize_t cb_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                       uint32_t *data_flags, nghttp2_data_source *source, void *u) {
    (void)s; (void)source;
    return ps_on_read(((ps_conn *)u)->handle, sid, buf, length, data_flags);
}

ps_conn *ps_conn_new(void *handle, size_t size_limit, size_t count_limit) {
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    ps_conn *c = calloc(1, sizeof(ps_conn));
    int rv;
    if (c == NULL) return NULL;
    c->handle = handle;
    c->size_limit = size_limit;
    c->count_limit = count_limit;
    if (nghttp2_session_callbacks_new(&cbs)) { free(c); return NULL; }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cb_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cb_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, cb_frame_send);
    if (nghttp2_option_new(&opt)) { nghttp2_session_callbacks_del(cbs); free(c); return NULL; }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_http_messaging(opt, 1);
    rv = nghttp2_session_server_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv) { free(c); return NULL; }
    return c;
}

void ps_conn_del(ps_conn *c) {
    nghttp2_session_del(c->session);
    free(c->hbuf); free(c->hoff); free(c->obuf); free(c);
}

ssize_t ps_send(ps_conn *c) {
    const uint8_t *p;
    ssize_t n;
    for (;;) {
        n = nghttp2_session_mem_send(c->session, &p);
        if (n < 0) return c->olen ? (ssize_t)c->olen : n;  /* what was framed still goes */
        if (n == 0) return (ssize_t)c->olen;
        if (ps_grow((void **)&c->obuf, &c->ocap, c->olen + (size_t)n, 1)) return NGHTTP2_ERR_NOMEM;
        memcpy(c->obuf + c->olen, p, (size_t)n);
        c->olen += (size_t)n;
    }
}

ssize_t ps_recv(ps_conn *c, const uint8_t *in, size_t inlen) {
    /* Then frame what that queued at once: a GOAWAY nghttp2 chose (HPACK) shows in c->goaway,
       which mem_recv does not report. The caller writes obuf once per turn, as for ps_send. */
    ssize_t rv = nghttp2_session_mem_recv(c->session, in, inlen);
    ssize_t sent = ps_send(c);
    return rv < 0 ? rv : sent < 0 ? sent : rv;
}

static nghttp2_nv *ps_nva(const uint8_t *buf, const size_t *lens, size_t n) {
    nghttp2_nv *nva = malloc(sizeof(nghttp2_nv) * (n ? n : 1));
    size_t i, at = 0;
    if (nva == NULL) return NULL;
    for (i = 0; i < n; i++) {
        nva[i].name = (uint8_t *)buf + at; nva[i].namelen = lens[2 * i]; at += lens[2 * i];
        nva[i].value = (uint8_t *)buf + at; nva[i].valuelen = lens[2 * i + 1]; at += lens[2 * i + 1];
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    return nva;
}

int ps_submit_headers(ps_conn *c, int end, int32_t sid, const uint8_t *buf, const size_t *lens, size_t n) {
    nghttp2_nv *nva = ps_nva(buf, lens, n);
    int rv;
    if (nva == NULL) return NGHTTP2_ERR_NOMEM;
    rv = nghttp2_submit_headers(c->session, end ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE, sid,
                                NULL, nva, n, NULL);
    free(nva);
    return rv;
}

int ps_submit_trailer(ps_conn *c, int32_t sid, const uint8_t *buf, const size_t *lens, size_t n) {
    nghttp2_nv *nva = ps_nva(buf, lens, n);
    int rv;
    if (nva == NULL) return NGHTTP2_ERR_NOMEM;
    rv = nghttp2_submit_trailer(c->session, sid, nva, n);
    free(nva);
    return rv;
}

int ps_submit_data(ps_conn *c, int32_t sid) {
    nghttp2_data_provider prd;
    prd.source.ptr = NULL;
    prd.read_callback = cb_read;
    /* END_STREAM on the source's EOF, unless it says trailers follow (NO_END_STREAM). */
    return nghttp2_submit_data(c->session, NGHTTP2_FLAG_END_STREAM, sid, &prd);
}

int32_t ps_window(ps_conn *c, int32_t sid, size_t stream_queued, size_t queued) {
    /* What DATA may be queued now: the peer's windows less what is queued and not yet sent
       (nghttp2 counts bytes against a window only as it frames them), at most one frame. */
    int64_t w = nghttp2_session_get_stream_remote_window_size(c->session, sid);
    int64_t cx = (int64_t)nghttp2_session_get_remote_window_size(c->session) - (int64_t)queued;
    int64_t frame = nghttp2_session_get_remote_settings(c->session, NGHTTP2_SETTINGS_MAX_FRAME_SIZE);
    if (w < 0) return -1;
    w -= (int64_t)stream_queued;
    if (cx < w) w = cx;
    if (frame < w) w = frame;
    return (int32_t)w;
}

int ps_stream_open(ps_conn *c, int32_t sid) {
    nghttp2_stream *st = nghttp2_session_find_stream(c->session, sid);
    return st != NULL && nghttp2_stream_get_state(st) != NGHTTP2_STREAM_STATE_CLOSED;
}

int ps_settings(ps_conn *c, uint32_t streams, uint32_t window, uint32_t header_list) {
    nghttp2_settings_entry iv[3] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list},
    };
    return nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 3);
}
"""


def build(into: Path, work: Path) -> Path:
    """Compile the module in `work` and move its shared library into `into`; its path."""
    from cffi import FFI  # type: ignore[import-untyped]  # a build-time tool, no stubs

    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=["nghttp2"], extra_compile_args=["-O2"])
    built = Path(ffi.compile(tmpdir=str(work), verbose=False))
    target = into / built.name
    built.rename(target)
    return target
