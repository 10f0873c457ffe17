/* Threads that share one product: the barrier fastlstm's kernels meet at.
 *
 * When a batch has fewer sequences than threads (batch 1 above all), the threads of one
 * OpenMP parallel region work on the same sequences together: each multiplies its share of
 * every weight matrix's panels (matmul.h's fl_matmul_part) and updates its share of the
 * hidden units (gates.h), and they meet at a barrier between the steps that read what
 * another thread wrote: several times a token.
 *
 * The barrier is fastlstm's own rather than `#pragma omp barrier`, for machines where other
 * processes compete for the cores: libgomp spins at a barrier for up to milliseconds before
 * it sleeps, so a thread waiting for a member that the scheduler took off its core kept
 * spinning on a core that member (or the other process) needed.  Here a waiting thread
 * spins briefly, then yields its core to anything else that is ready to run (see
 * fl_team_barrier).  Each thread also counts the time it waited, which stack.pxd's
 * team_wants_solo reads.
 */
#ifndef FASTLSTM_TEAM_H
#define FASTLSTM_TEAM_H

#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define FL_SPIN_NS 50000LL /* 0.05 ms */

/* What the threads of one team share (allocated per call by fl_team_new). */
typedef struct {
    int size;            /* threads in the team */
    int arrived;         /* threads at the current barrier */
    int generation;      /* barriers passed: what waiting threads watch (a futex word) */
    int sleepers;        /* threads asleep on `generation` */
    long long *waited;   /* (size,) ns each thread has waited at barriers since thread 0 took it */
} fl_team;

static inline long long fl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A team of at most `size` threads, or NULL if out of memory.  Free with fl_team_free. */
static inline fl_team *fl_team_new(int size)
{
    fl_team *team = (fl_team *)calloc(1, sizeof(fl_team));
    if (!team)
        return NULL;
    team->size = size;
    team->waited = (long long *)calloc(size > 0 ? size : 1, sizeof(long long));
    if (!team->waited) {
        free(team);
        return NULL;
    }
    return team;
}

static inline void fl_team_free(fl_team *team)
{
    if (team) {
        free(team->waited);
        free(team);
    }
}

/* Each thread of the parallel region, before its first barrier: the team's actual size
 * (OpenMP may grant fewer threads than were asked for; all write the same value). */
static inline void fl_team_join(fl_team *team, int size)
{
    __atomic_store_n(&team->size, size, __ATOMIC_RELAXED);
}

static inline void fl_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline void fl_sleep_while(int *word, int value)
{
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word;
    (void)value;
    sched_yield();
#endif
}

static inline void fl_wake_all(int *word)
{
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Wait until all team->size threads have called this (thread `tid` is one of them); then
 * every write made before it by any of them is visible to all.
 *
 * A waiting thread spins for FL_SPIN_NS, then yields its core to whatever else is ready
 * to run, again and again, without sleeping: a sleeping thread is woken too late (on a
 * virtual machine, waking a halted core took milliseconds, and the other thread then
 * waited as long at the next barrier, and so on).  `long_wait` (the end of thread 0's time
 * alone, see stack.pxd): the wait is long and expected, so the thread sleeps, and it is
 * not counted in the thread's waiting time. */
static inline void fl_team_barrier(fl_team *team, int tid, int long_wait)
{
    long long start = fl_now_ns();
    int generation = __atomic_load_n(&team->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&team->arrived, 1, __ATOMIC_ACQ_REL) ==
        __atomic_load_n(&team->size, __ATOMIC_RELAXED)) {
        __atomic_store_n(&team->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&team->generation, generation + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&team->sleepers, __ATOMIC_SEQ_CST))
            fl_wake_all(&team->generation);
    } else {
        long long now = start;
        while (__atomic_load_n(&team->generation, __ATOMIC_ACQUIRE) == generation) {
            if (now - start < FL_SPIN_NS) {
                fl_relax();
                now = fl_now_ns();
            } else if (!long_wait) {
                sched_yield();
            } else {
                __atomic_add_fetch(&team->sleepers, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&team->generation, __ATOMIC_SEQ_CST) == generation)
                    fl_sleep_while(&team->generation, generation);
                __atomic_sub_fetch(&team->sleepers, 1, __ATOMIC_RELAXED);
            }
        }
    }
    if (!long_wait)
        __atomic_fetch_add(&team->waited[tid], fl_now_ns() - start, __ATOMIC_RELAXED);
}

/* Thread 0: the time team thread t waited since the last call, reset to 0. */
static inline long long fl_team_take_wait(fl_team *team, int t)
{
    return __atomic_exchange_n(&team->waited[t], 0, __ATOMIC_RELAXED);
}

/* What the teams of this module found, kept across calls so that short calls (a stream's
 * chunks) add up to a judgement and do not each pay to find it out again: until when
 * (CLOCK_MONOTONIC, ns) thread 0 works alone, how many windows in a row were lagging, how
 * long the next time alone lasts (0: the shortest), and the window being filled (team time,
 * and the longest waits in it).  Relaxed atomics: any recent value will do. */
static long long fl_team_solo_until = 0;
static int fl_team_lagging = 0;
static long long fl_team_solo_ns = 0;
static long long fl_team_window_ns = 0;
static long long fl_team_window_wait_ns = 0;

/* Thread 0 of a team, at `now`: adds `elapsed` ns of team time, in which some thread waited
 * `wait` ns, to the window.  Once the window holds `window_ns` it is judged (lagging if the
 * waiting took more than half of it) and a new one starts.  After `lagging_windows` lagging
 * windows in a row, returns until when thread 0 works alone: `solo_min_ns` the first time,
 * twice as long each time the team is still found lagging, up to `solo_max_ns`; a window
 * that is not lagging makes the next time alone short again.  Otherwise returns 0.  (The
 * policy and its numbers: stack.pxd's team_wants_solo.) */
static inline long long fl_team_judge(long long now, long long elapsed, long long wait,
                                      long long window_ns, int lagging_windows,
                                      long long solo_min_ns, long long solo_max_ns)
{
    long long span, waited, alone;
    int lagging;
    __atomic_add_fetch(&fl_team_window_wait_ns, wait, __ATOMIC_RELAXED);
    if (__atomic_add_fetch(&fl_team_window_ns, elapsed, __ATOMIC_RELAXED) < window_ns)
        return 0;
    span = __atomic_exchange_n(&fl_team_window_ns, 0, __ATOMIC_RELAXED);
    waited = __atomic_exchange_n(&fl_team_window_wait_ns, 0, __ATOMIC_RELAXED);
    if (span < window_ns) /* another call judged it just now */
        return 0;
    if (2 * waited <= span) {
        __atomic_store_n(&fl_team_lagging, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&fl_team_solo_ns, solo_min_ns, __ATOMIC_RELAXED);
        return 0;
    }
    lagging = __atomic_load_n(&fl_team_lagging, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&fl_team_lagging, lagging < lagging_windows ? lagging : 0,
                     __ATOMIC_RELAXED);
    if (lagging < lagging_windows)
        return 0;
    alone = __atomic_load_n(&fl_team_solo_ns, __ATOMIC_RELAXED);
    if (alone < solo_min_ns)
        alone = solo_min_ns;
    __atomic_store_n(&fl_team_solo_ns, 2 * alone < solo_max_ns ? 2 * alone : solo_max_ns,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&fl_team_solo_until, now + alone, __ATOMIC_RELAXED);
    return now + alone;
}

static inline long long fl_get_team_solo_until(void)
{
    return __atomic_load_n(&fl_team_solo_until, __ATOMIC_RELAXED);
}

#endif /* FASTLSTM_TEAM_H */
