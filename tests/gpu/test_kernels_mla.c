/**
 * @file test_kernels_mla.c
 * @brief test_gpu_kernels --group mla: mla_decode_cuda vs ref mla_attend_absorb (one query token
 *        per request) on the same bf16 inputs over a paged cache with scattered pages, for one,
 *        three and the automatic number of splits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla_decode.h"
#include "model/mla.h"
#include "test_kernels.h"

void test_mla(void) {
    printf("== mla (oracle: ref mla_attend_absorb on the same bf16 inputs)\n");
    if (g_dev.cc_major < 8) {
        printf("  SKIP: needs compute capability 8.0\n");
        return;
    }
    const int H = 128, Dc = MLA_DC, Dr = MLA_DR, D = Dc + Dr, PAGE = MLA_PAGE;
    static const int lens_full[] = { 1, 63, 64, 65, 1000, 4097 };
    static const int lens_quick[] = { 1, 64, 65, 700 };
    const int *lens = g_quick ? lens_quick : lens_full;
    const int B = g_quick ? 4 : 6;
    int max_len = 0, total_pages = 0, stride = 0;
    for (int b = 0; b < B; b++) {
        int pages = (lens[b] + PAGE - 1) / PAGE;
        total_pages += pages;
        if (pages > stride) stride = pages;
        if (lens[b] > max_len) max_len = lens[b];
    }
    stride += 1;
    const int nblocks = total_pages + 5; /* spare blocks hold NaN: reading one poisons the result */
    /* Physical blocks: a random permutation, so pages of one request are scattered. */
    int *perm = xmalloc((size_t)nblocks * sizeof *perm);
    for (int i = 0; i < nblocks; i++) perm[i] = i;
    for (int i = nblocks - 1; i > 0; i--) {
        int j = randint(i + 1), tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    int *table = xmalloc((size_t)(B * stride) * sizeof *table);
    for (int i = 0; i < B * stride; i++) table[i] = -1;
    int used = 0;
    for (int b = 0; b < B; b++)
        for (int pg = 0; pg < (lens[b] + PAGE - 1) / PAGE; pg++) table[b * stride + pg] = perm[used++];
    /* Cache: NaN everywhere, then the valid positions of each request. */
    const int64_t cache_elems = (int64_t)nblocks * PAGE * D;
    uint16_t *cache = xmalloc((size_t)cache_elems * 2);
    for (int64_t i = 0; i < cache_elems; i++) cache[i] = 0x7FC0; /* bf16 NaN */
    float cmax = 0.0f;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++) {
            uint16_t *row = cache + ((int64_t)table[b * stride + t / PAGE] * PAGE + t % PAGE) * D;
            for (int i = 0; i < D; i++) {
                row[i] = f32_to_bf16(randn());
                if (fabsf(bf16_to_f32(row[i])) > cmax) cmax = fabsf(bf16_to_f32(row[i]));
            }
        }
    uint16_t *q_abs = xmalloc((size_t)B * H * Dc * 2), *q_pe = xmalloc((size_t)B * H * Dr * 2);
    for (int64_t i = 0; i < (int64_t)B * H * Dc; i++) q_abs[i] = f32_to_bf16(randn());
    for (int64_t i = 0; i < (int64_t)B * H * Dr; i++) q_pe[i] = f32_to_bf16(randn());
    const float scale = 0.1352337788608801f;

    /* Reference, request by request, on float copies of the same bf16 values. */
    float *u_ref = xmalloc((size_t)B * H * Dc * sizeof(float));
    {
        float *qa = xmalloc((size_t)H * Dc * 4), *qp = xmalloc((size_t)H * Dr * 4);
        float *ckv = xmalloc((size_t)max_len * Dc * 4), *kpe = xmalloc((size_t)max_len * Dr * 4);
        float *P = xmalloc((size_t)max_len * 4);
        for (int b = 0; b < B; b++) {
            for (int i = 0; i < H * Dc; i++) qa[i] = bf16_to_f32(q_abs[(int64_t)b * H * Dc + i]);
            for (int i = 0; i < H * Dr; i++) qp[i] = bf16_to_f32(q_pe[(int64_t)b * H * Dr + i]);
            for (int t = 0; t < lens[b]; t++) {
                const uint16_t *row = cache + ((int64_t)table[b * stride + t / PAGE] * PAGE + t % PAGE) * D;
                for (int i = 0; i < Dc; i++) ckv[(int64_t)t * Dc + i] = bf16_to_f32(row[i]);
                for (int i = 0; i < Dr; i++) kpe[(int64_t)t * Dr + i] = bf16_to_f32(row[Dc + i]);
            }
            mla_attend_absorb(u_ref + (int64_t)b * H * Dc, qa, qp, Dr, ckv, kpe, lens[b], H, Dc, Dr, scale, P, 0);
        }
        free(qa), free(qp), free(ckv), free(kpe), free(P);
    }

    DevBuf d_cache = devbuf_new("kv_cache", (size_t)cache_elems * 2), d_qa = devbuf_new("q_abs", (size_t)B * H * Dc * 2),
           d_qp = devbuf_new("q_pe", (size_t)B * H * Dr * 2), d_tab = devbuf_new("block_table", (size_t)(B * stride) * 4),
           d_len = devbuf_new("seq_lens", (size_t)B * 4), d_u = devbuf_new("u", (size_t)B * H * Dc * 4),
           d_lse = devbuf_new("lse", (size_t)B * H * 4);
    devbuf_upload(&d_cache, cache, (size_t)cache_elems * 2);
    devbuf_upload(&d_qa, q_abs, (size_t)B * H * Dc * 2);
    devbuf_upload(&d_qp, q_pe, (size_t)B * H * Dr * 2);
    devbuf_upload(&d_tab, table, (size_t)(B * stride) * 4);
    devbuf_upload(&d_len, lens, (size_t)B * 4);
    float *u = xmalloc((size_t)B * H * Dc * 4), *lse1 = xmalloc((size_t)B * H * 4), *lse = xmalloc((size_t)B * H * 4);
    /* Tolerance: P is rounded to bf16 (relative 2^-9) before P·V while l sums the FP32 values,
     * so |u − u_ref| ≤ 2^-9·Σ_t P(t)·|c_kv(t)| ≤ 2^-9·max|c_kv|; we allow 2^-8·max|c_kv| and
     * NMSE ≤ 1e-4 (expected ~1e-6; a wrong page or head shows up as O(1)). */
    Tol tol = { ldexp((double)cmax, -8), 0.0, NULL, 1e-4 };
    const int split_list[] = { 1, 3, 0 };
    for (int si = 0; si < 3; si++) {
        int splits = split_list[si] ? split_list[si] : mla_decode_num_splits(B, H, max_len);
        size_t wsb = mla_decode_workspace_bytes(B, H, splits);
        DevBuf d_ws = devbuf_new("workspace", wsb ? wsb : 1);
        devbuf_poison(&d_ws, 0xFF);
        devbuf_poison(&d_u, 0xFF);
        devbuf_poison(&d_lse, 0xFF);
        MlaDecodeParams p;
        memset(&p, 0, sizeof p);
        p.u = d_u.ptr, p.lse = d_lse.ptr, p.q_abs = d_qa.ptr, p.q_pe = d_qp.ptr, p.kv_cache = d_cache.ptr;
        p.block_table = d_tab.ptr, p.block_table_stride = stride, p.seq_lens = d_len.ptr;
        p.B = B, p.H = H, p.max_seq_len = max_len, p.scale = scale, p.num_splits = splits;
        p.workspace = d_ws.ptr, p.workspace_bytes = wsb;
        char what[160];
        snprintf(what, sizeof what, "mla B=%d H=%d lens up to %d, %d split(s)%s", B, H, max_len, splits,
                 split_list[si] ? "" : " (auto)");
        Err err = { { 0 } };
        if (launched(mla_decode_cuda(&p, 0, &err), &err, what)) {
            devbuf_download(u, &d_u, (size_t)B * H * Dc * 4);
            devbuf_download(lse, &d_lse, (size_t)B * H * 4);
            check_close(what, u, u_ref, (int64_t)B * H * Dc, Dc, tol);
            guards(&d_u, what), guards(&d_lse, what), guards(&d_ws, what);
            if (si == 0) memcpy(lse1, lse, (size_t)B * H * 4);
            else {
                /* Same log-sum-exp whichever way the positions are split (FP32 rounding only). */
                Tol tl = { 1e-5, 1e-5, NULL, 1e-10 };
                char w2[200];
                snprintf(w2, sizeof w2, "%s: lse equals the 1-split lse", what);
                check_close(w2, lse, lse1, (int64_t)B * H, H, tl);
            }
        }
        devbuf_free(&d_ws);
    }
    /* Rejected input: H not a multiple of 64. */
    MlaDecodeParams bad;
    memset(&bad, 0, sizeof bad);
    bad.B = 1, bad.H = 100;
    Err err = { { 0 } };
    report(mla_decode_cuda(&bad, 0, &err) == -1 && strstr(err.msg, "multiple of 64"), "mla rejects H = 100: \"%s\"",
           err.msg);
    devbuf_free(&d_cache), devbuf_free(&d_qa), devbuf_free(&d_qp), devbuf_free(&d_tab), devbuf_free(&d_len);
    devbuf_free(&d_u), devbuf_free(&d_lse);
    free(perm), free(table), free(cache), free(q_abs), free(q_pe), free(u_ref), free(u), free(lse1), free(lse);
}
