/*
 * capi_fork.c -- a forked child may call numba_ln.h, with calls of every
 * size, and gets the parent's bits; the parent carries on unharmed.
 *
 * 1. The parent makes large calls (its library threads start), then forks.
 *    The child repeats them and compares with the parent's results, then 16
 *    threads make large and small calls at once and compare. The parent
 *    checks the child's exit status and does the same 16-thread check.
 * 2. A second thread of the parent makes large calls in a loop; the parent
 *    forks several times while that thread is inside a call. Each child
 *    repeats the single-thread check; the looping thread's results must
 *    stay right too.
 * Every child sets alarm(): a call that hangs kills it with SIGALRM, and the
 * parent reports it. Prints "OK <children>" and exits 0, or prints each
 * failure and exits 1.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capi_cases.h"

#define THREADS 16
#define CHILD_SECONDS 60
#define FORKS_DURING_CALLS 4

/* Large (the library's threads), just above the serial limit, and small. */
static const shape_t shapes[] = {{4096, 1024, 1024}, {64, 768, 770}, {8, 64, 70}};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))
#define LARGE 0

static buffers_t inputs[NSHAPES];
static buffers_t reference[NSHAPES]; /* the parent's results before any fork */

/* Every shape again into fresh outputs, compared with the reference. */
static void *every_shape_again(void *arg)
{
    int thread = (int)(intptr_t)arg;
    for (int k = 0; k < NSHAPES; k++) {
        /* The large shape is left to the main thread: 16 copies would not fit. */
        if (thread >= 0 && k == LARGE)
            continue;
        buffers_t out;
        alloc_outputs(&shapes[k], &out);
        run_shape(&shapes[k], &inputs[k], &out);
        compare_shape(&shapes[k], &out, &reference[k], thread < 0 ? "alone" : "threads",
                      thread);
        free_outputs(&out);
    }
    return NULL;
}

/* The checks a forked child (and the parent afterwards) makes. */
static void check_all(int with_threads)
{
    every_shape_again((void *)(intptr_t)-1);
    if (with_threads)
        run_threads(THREADS, every_shape_again);
}

/* Fork; the child runs check_all under an alarm and exits 0 only if all was right. */
static pid_t fork_child(int with_threads)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        alarm(CHILD_SECONDS);
        check_all(with_threads);
        fflush(stdout);
        _exit(failures ? 1 : 0);
    }
    return pid;
}

/* Wait for a child; count it as a failure unless it exited 0. */
static void reap(pid_t pid, const char *what)
{
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        exit(2);
    }
    if (WIFSIGNALED(status)) {
        printf("FAIL %s: child killed by signal %d%s\n", what, WTERMSIG(status),
               WTERMSIG(status) == SIGALRM ? " (it hung)" : "");
        failures++;
    } else if (WEXITSTATUS(status) != 0) {
        printf("FAIL %s: child exited with %d\n", what, WEXITSTATUS(status));
        failures++;
    }
}

static atomic_int keep_calling = 1;
static atomic_long calls_made;

/* Large calls in a loop, each checked, until keep_calling drops. */
static void *call_in_a_loop(void *arg)
{
    buffers_t out;
    (void)arg;
    alloc_outputs(&shapes[LARGE], &out);
    while (atomic_load(&keep_calling)) {
        run_shape(&shapes[LARGE], &inputs[LARGE], &out);
        compare_shape(&shapes[LARGE], &out, &reference[LARGE], "looping", -2);
        atomic_fetch_add(&calls_made, 1);
    }
    free_outputs(&out);
    return NULL;
}

int main(void)
{
    pthread_t looping;
    int children = 0;
    for (int k = 0; k < NSHAPES; k++) {
        make_inputs(&shapes[k], &inputs[k], (uint64_t)k);
        alloc_outputs(&shapes[k], &reference[k]);
        run_shape(&shapes[k], &inputs[k], &reference[k]);
    }

    reap(fork_child(1), "fork after large calls");
    children++;
    check_all(1);

    if (pthread_create(&looping, NULL, call_in_a_loop, NULL) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 2;
    }
    for (int i = 0; i < FORKS_DURING_CALLS; i++) {
        /* Let the loop get into a call (a large call takes milliseconds). */
        struct timespec pause = {0, (1 + i) * 1000 * 1000};
        nanosleep(&pause, NULL);
        reap(fork_child(0), "fork while another thread calls");
        children++;
    }
    atomic_store(&keep_calling, 0);
    pthread_join(looping, NULL);
    if (atomic_load(&calls_made) == 0) {
        printf("FAIL the looping thread made no call\n");
        failures++;
    }

    if (failures) {
        printf("FAILED %d\n", failures);
        return 1;
    }
    printf("OK %d\n", children);
    return 0;
}
