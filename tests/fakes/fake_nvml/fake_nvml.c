/*
 * A fake libnvidia-ml.so.1 for tests: the real pynvml runs on top of it.
 *
 * Every API call re-reads the scenario file when it changed (stat: inode, size, mtime), so a test
 * can change what the "driver" reports while a server runs. The file is found through
 * fake_nvml_set_scenario_path() (in-process control) or else $FAKE_NVML_SCENARIO, read on each
 * call; with neither (or a missing file) the driver is "not loaded".
 *
 * Scenario format: `key=value` lines, `#` comments.
 *   driver_loaded=1|0          0: nvmlInit* and every other call answer NVML_ERROR_DRIVER_NOT_LOADED
 *   init_error=<code>          nvmlInit* (and every other call) answer this NVML error code
 *   driver_version=550.54.15
 *   delay_ms=<ms>              every call sleeps this long (nanosleep: blocks the OS thread)
 *   delay_only=<fn>,<fn>       ...only these functions sleep
 *   missing_functions=<fn>,... these answer NVML_ERROR_FUNCTION_NOT_FOUND
 *   gpus=<n>
 *   gpu.<i>.name= / uuid= / total_bytes= / used_bytes= / reserved_bytes= / utilization=
 *   gpu.<i>.memory_utilization= / temperature_c= / power_mw=
 *   gpu.<i>.unsupported=name,uuid,memory,utilization,temperature,power,processes
 *   gpu.<i>.memory_v2=ok|function_not_found|not_supported|version_mismatch
 *   gpu.<i>.lost=1             handle lookup and every device call answer NVML_ERROR_GPU_IS_LOST
 *   gpu.<i>.error=<code>       every device call (after the handle) answers this code
 *   gpu.<i>.handle_error=<code> nvmlDeviceGetHandleByIndex answers this code
 *   proc=<gpu> <pid> <used_bytes|unknown> <compute|graphics|both> <name, rest of line; empty: NOT_FOUND>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFU
#define NVML_MEMORY_V2 0x02000028U
#define NVML_TEMPERATURE_V1 0x100000CU
#define NVML_TEMPERATURE_GPU 0U

/* Layouts match pynvml's ctypes structures (c_nvmlMemory_t, c_nvmlMemory_v2_t, ...). */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int version; unsigned int sensorType; int temperature; } nvmlTemperature_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define MAX_GPUS 64
#define MAX_PROCS 4096
#define MAX_STR 256
#define MAX_LIST 2048

enum {
    UNSUP_NAME = 1, UNSUP_UUID = 2, UNSUP_MEMORY = 4, UNSUP_UTILIZATION = 8,
    UNSUP_TEMPERATURE = 16, UNSUP_POWER = 32, UNSUP_PROCESSES = 64,
};
enum { KIND_COMPUTE = 1, KIND_GRAPHICS = 2 };

typedef struct { unsigned int index; } fake_device_t;   /* nvmlDevice_t points at one of these */
typedef fake_device_t *nvmlDevice_t;

typedef struct {
    char name[MAX_STR];
    char uuid[MAX_STR];
    unsigned long long total, used, reserved;
    unsigned int utilization, memory_utilization, temperature_c, power_mw;
    unsigned int unsupported;
    int memory_v2_rc;
    int handle_rc;
    int call_rc;
} fake_gpu_t;

typedef struct {
    unsigned int gpu, pid;
    unsigned long long used;
    int kinds;
    char name[MAX_STR];
} fake_proc_t;

typedef struct {
    int init_rc;
    char driver_version[MAX_STR];
    unsigned int delay_ms;
    char delay_only[MAX_LIST];
    char missing[MAX_LIST];
    unsigned int gpu_count;
    fake_gpu_t gpus[MAX_GPUS];
    unsigned int proc_count;
    fake_proc_t procs[MAX_PROCS];
} scenario_t;

static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
static scenario_t g_sc;
static fake_device_t g_devices[MAX_GPUS];
static int g_devices_ready;
static int g_refcount;
static char g_override_path[4096];
static char g_loaded_path[4096];
static struct stat g_loaded_stat;
static int g_loaded_state;   /* 0: never, 1: file loaded, 2: no file */
static int g_force_reload;

/* Call counters, so tests can see how many driver calls a reading costs. */
static const char *const FUNCTION_NAMES[] = {
    "nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlSystemGetDriverVersion",
    "nvmlSystemGetProcessName", "nvmlDeviceGetCount", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName",
    "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
};
#define FUNCTION_COUNT (sizeof(FUNCTION_NAMES) / sizeof(FUNCTION_NAMES[0]))
enum {
    F_INIT, F_INIT_V2, F_INIT_WITH_FLAGS, F_SHUTDOWN, F_DRIVER_VERSION, F_PROCESS_NAME, F_COUNT,
    F_COUNT_V2, F_HANDLE, F_HANDLE_V2, F_NAME, F_UUID, F_MEMORY, F_MEMORY_V2, F_UTILIZATION,
    F_TEMPERATURE, F_TEMPERATURE_V, F_POWER, F_COMPUTE_V2, F_COMPUTE_V3, F_GRAPHICS_V2, F_GRAPHICS_V3,
};
static unsigned long g_counts[FUNCTION_COUNT];

static void copy_str(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* Is `name` an element of the comma-separated `list`? */
static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        const char *end = p;
        while (*end && *end != ',') end++;
        const char *last = end;
        while (last > p && last[-1] == ' ') last--;
        if ((size_t)(last - p) == n && strncmp(p, name, n) == 0) return 1;
        p = end;
    }
    return 0;
}

static void default_gpu(fake_gpu_t *gpu, unsigned int index) {
    memset(gpu, 0, sizeof(*gpu));
    snprintf(gpu->name, sizeof(gpu->name), "Fake GPU %u", index);
    snprintf(gpu->uuid, sizeof(gpu->uuid), "GPU-00000000-0000-0000-0000-%012u", index);
    gpu->total = 24ULL << 30;
}

static void reset_scenario(int init_rc) {
    memset(&g_sc, 0, sizeof(g_sc));
    g_sc.init_rc = init_rc;
    copy_str(g_sc.driver_version, sizeof(g_sc.driver_version), "550.54.15");
    for (unsigned int i = 0; i < MAX_GPUS; i++) default_gpu(&g_sc.gpus[i], i);
}

static unsigned int parse_unsupported(const char *value) {
    unsigned int mask = 0;
    if (in_list(value, "name")) mask |= UNSUP_NAME;
    if (in_list(value, "uuid")) mask |= UNSUP_UUID;
    if (in_list(value, "memory")) mask |= UNSUP_MEMORY;
    if (in_list(value, "utilization")) mask |= UNSUP_UTILIZATION;
    if (in_list(value, "temperature")) mask |= UNSUP_TEMPERATURE;
    if (in_list(value, "power")) mask |= UNSUP_POWER;
    if (in_list(value, "processes")) mask |= UNSUP_PROCESSES;
    return mask;
}

static void parse_gpu_key(unsigned int index, const char *key, const char *value) {
    fake_gpu_t *gpu = &g_sc.gpus[index];
    if (strcmp(key, "name") == 0) copy_str(gpu->name, sizeof(gpu->name), value);
    else if (strcmp(key, "uuid") == 0) copy_str(gpu->uuid, sizeof(gpu->uuid), value);
    else if (strcmp(key, "total_bytes") == 0) gpu->total = strtoull(value, NULL, 10);
    else if (strcmp(key, "used_bytes") == 0) gpu->used = strtoull(value, NULL, 10);
    else if (strcmp(key, "reserved_bytes") == 0) gpu->reserved = strtoull(value, NULL, 10);
    else if (strcmp(key, "utilization") == 0) gpu->utilization = (unsigned int)strtoul(value, NULL, 10);
    else if (strcmp(key, "memory_utilization") == 0) gpu->memory_utilization = (unsigned int)strtoul(value, NULL, 10);
    else if (strcmp(key, "temperature_c") == 0) gpu->temperature_c = (unsigned int)strtoul(value, NULL, 10);
    else if (strcmp(key, "power_mw") == 0) gpu->power_mw = (unsigned int)strtoul(value, NULL, 10);
    else if (strcmp(key, "unsupported") == 0) gpu->unsupported = parse_unsupported(value);
    else if (strcmp(key, "memory_v2") == 0) {
        if (strcmp(value, "function_not_found") == 0) gpu->memory_v2_rc = NVML_ERROR_FUNCTION_NOT_FOUND;
        else if (strcmp(value, "not_supported") == 0) gpu->memory_v2_rc = NVML_ERROR_NOT_SUPPORTED;
        else if (strcmp(value, "version_mismatch") == 0) gpu->memory_v2_rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else gpu->memory_v2_rc = NVML_SUCCESS;
    } else if (strcmp(key, "lost") == 0) {
        int lost = atoi(value) != 0;
        gpu->handle_rc = lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
        gpu->call_rc = lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
    } else if (strcmp(key, "error") == 0) gpu->call_rc = atoi(value);
    else if (strcmp(key, "handle_error") == 0) gpu->handle_rc = atoi(value);
}

/* proc=<gpu> <pid> <used_bytes|unknown> <compute|graphics|both> <name...> */
static void parse_proc(char *value) {
    if (g_sc.proc_count >= MAX_PROCS) return;
    fake_proc_t *proc = &g_sc.procs[g_sc.proc_count];
    memset(proc, 0, sizeof(*proc));
    char used[64] = "", kind[32] = "";
    int consumed = 0;
    if (sscanf(value, "%u %u %63s %31s %n", &proc->gpu, &proc->pid, used, kind, &consumed) < 4) return;
    proc->used = strcmp(used, "unknown") == 0 ? NVML_VALUE_NOT_AVAILABLE_ULL : strtoull(used, NULL, 10);
    proc->kinds = strcmp(kind, "graphics") == 0 ? KIND_GRAPHICS
                : strcmp(kind, "both") == 0 ? (KIND_COMPUTE | KIND_GRAPHICS) : KIND_COMPUTE;
    copy_str(proc->name, sizeof(proc->name), trim(value + consumed));
    g_sc.proc_count++;
}

static void parse_line(char *line) {
    char *s = trim(line);
    if (*s == '\0' || *s == '#') return;
    char *eq = strchr(s, '=');
    if (!eq) return;
    *eq = '\0';
    char *key = trim(s);
    char *value = trim(eq + 1);
    if (strcmp(key, "driver_loaded") == 0) {
        if (atoi(value) == 0) g_sc.init_rc = NVML_ERROR_DRIVER_NOT_LOADED;
        else if (g_sc.init_rc == NVML_ERROR_DRIVER_NOT_LOADED) g_sc.init_rc = NVML_SUCCESS;
    } else if (strcmp(key, "init_error") == 0) g_sc.init_rc = atoi(value);
    else if (strcmp(key, "driver_version") == 0) copy_str(g_sc.driver_version, sizeof(g_sc.driver_version), value);
    else if (strcmp(key, "delay_ms") == 0) g_sc.delay_ms = (unsigned int)strtoul(value, NULL, 10);
    else if (strcmp(key, "delay_only") == 0) copy_str(g_sc.delay_only, sizeof(g_sc.delay_only), value);
    else if (strcmp(key, "missing_functions") == 0) copy_str(g_sc.missing, sizeof(g_sc.missing), value);
    else if (strcmp(key, "gpus") == 0) {
        unsigned long n = strtoul(value, NULL, 10);
        g_sc.gpu_count = n > MAX_GPUS ? MAX_GPUS : (unsigned int)n;
    } else if (strcmp(key, "proc") == 0) parse_proc(value);
    else if (strncmp(key, "gpu.", 4) == 0) {
        char *end = NULL;
        unsigned long index = strtoul(key + 4, &end, 10);
        if (end && *end == '.' && index < MAX_GPUS) parse_gpu_key((unsigned int)index, end + 1, value);
    }
}

/* Re-read the scenario when its path or file changed. Caller holds g_mutex. */
static void reload_if_changed(void) {
    const char *path = g_override_path[0] ? g_override_path : getenv("FAKE_NVML_SCENARIO");
    if (!g_devices_ready) {
        for (unsigned int i = 0; i < MAX_GPUS; i++) g_devices[i].index = i;
        g_devices_ready = 1;
    }
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0) {
        if (g_loaded_state != 2) reset_scenario(NVML_ERROR_DRIVER_NOT_LOADED);
        g_loaded_state = 2;
        g_loaded_path[0] = '\0';
        return;
    }
    if (!g_force_reload && g_loaded_state == 1 && strcmp(path, g_loaded_path) == 0
        && st.st_ino == g_loaded_stat.st_ino && st.st_dev == g_loaded_stat.st_dev
        && st.st_size == g_loaded_stat.st_size
        && st.st_mtim.tv_sec == g_loaded_stat.st_mtim.tv_sec
        && st.st_mtim.tv_nsec == g_loaded_stat.st_mtim.tv_nsec)
        return;
    FILE *file = fopen(path, "r");
    if (!file) {
        reset_scenario(NVML_ERROR_DRIVER_NOT_LOADED);
        g_loaded_state = 2;
        return;
    }
    reset_scenario(NVML_SUCCESS);
    char line[4096];
    while (fgets(line, sizeof(line), file)) parse_line(line);
    fclose(file);
    g_force_reload = 0;
    g_loaded_state = 1;
    g_loaded_stat = st;
    copy_str(g_loaded_path, sizeof(g_loaded_path), path);
}

static void sleep_ms(unsigned int ms) {
    struct timespec left = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

/* The common prologue of every call: reload, count, check init/device state; sleep outside the lock. */
static int enter(int function, int needs_init, nvmlDevice_t device, int check_device_error,
                 fake_gpu_t *gpu_out) {
    int rc = NVML_SUCCESS;
    unsigned int delay = 0;
    pthread_mutex_lock(&g_mutex);
    reload_if_changed();
    g_counts[function]++;
    const char *name = FUNCTION_NAMES[function];
    if (g_sc.delay_only[0] == '\0' || in_list(g_sc.delay_only, name)) delay = g_sc.delay_ms;
    if (in_list(g_sc.missing, name)) rc = NVML_ERROR_FUNCTION_NOT_FOUND;
    else if (needs_init && g_refcount <= 0) rc = NVML_ERROR_UNINITIALIZED;
    else if (needs_init && g_sc.init_rc != NVML_SUCCESS) rc = g_sc.init_rc;
    else if (device) {
        if (device < g_devices || device >= g_devices + MAX_GPUS || device->index >= g_sc.gpu_count)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (check_device_error && g_sc.gpus[device->index].call_rc != NVML_SUCCESS)
            rc = g_sc.gpus[device->index].call_rc;
        else if (gpu_out)
            *gpu_out = g_sc.gpus[device->index];
    }
    pthread_mutex_unlock(&g_mutex);
    if (delay) sleep_ms(delay);
    return rc;
}

static int write_string(char *dst, unsigned int length, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---- control functions for tests ---- */

EXPORT void fake_nvml_set_scenario_path(const char *path) {
    pthread_mutex_lock(&g_mutex);
    copy_str(g_override_path, sizeof(g_override_path), path ? path : "");
    g_force_reload = 1;
    pthread_mutex_unlock(&g_mutex);
}

EXPORT void fake_nvml_reload(void) {
    pthread_mutex_lock(&g_mutex);
    g_force_reload = 1;
    pthread_mutex_unlock(&g_mutex);
}

EXPORT void fake_nvml_reset(void) {
    pthread_mutex_lock(&g_mutex);
    memset(g_counts, 0, sizeof(g_counts));
    g_refcount = 0;
    g_force_reload = 1;
    pthread_mutex_unlock(&g_mutex);
}

EXPORT void fake_nvml_reset_counts(void) {
    pthread_mutex_lock(&g_mutex);
    memset(g_counts, 0, sizeof(g_counts));
    pthread_mutex_unlock(&g_mutex);
}

/* Calls of `name` since the last reset; NULL: all calls. -1 for an unknown name. */
EXPORT long fake_nvml_call_count(const char *name) {
    long total = 0;
    pthread_mutex_lock(&g_mutex);
    for (size_t i = 0; i < FUNCTION_COUNT; i++) {
        if (!name) total += (long)g_counts[i];
        else if (strcmp(name, FUNCTION_NAMES[i]) == 0) {
            total = (long)g_counts[i];
            pthread_mutex_unlock(&g_mutex);
            return total;
        }
    }
    pthread_mutex_unlock(&g_mutex);
    return name ? -1 : total;
}

EXPORT int fake_nvml_init_refcount(void) {
    pthread_mutex_lock(&g_mutex);
    int refcount = g_refcount;
    pthread_mutex_unlock(&g_mutex);
    return refcount;
}

/* ---- NVML API ---- */

static int do_init(int function) {
    int rc = enter(function, 0, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    pthread_mutex_lock(&g_mutex);
    rc = g_sc.init_rc;
    if (rc == NVML_SUCCESS) g_refcount++;
    pthread_mutex_unlock(&g_mutex);
    return rc;
}

EXPORT int nvmlInit(void) { return do_init(F_INIT); }
EXPORT int nvmlInit_v2(void) { return do_init(F_INIT_V2); }
EXPORT int nvmlInitWithFlags(unsigned int flags) { (void)flags; return do_init(F_INIT_WITH_FLAGS); }

EXPORT int nvmlShutdown(void) {
    int rc = enter(F_SHUTDOWN, 0, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    pthread_mutex_lock(&g_mutex);
    if (g_refcount <= 0) rc = NVML_ERROR_UNINITIALIZED;
    else g_refcount--;
    pthread_mutex_unlock(&g_mutex);
    return rc;
}

EXPORT const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    int rc = enter(F_DRIVER_VERSION, 1, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    char copy[MAX_STR];
    pthread_mutex_lock(&g_mutex);
    copy_str(copy, sizeof(copy), g_sc.driver_version);
    pthread_mutex_unlock(&g_mutex);
    return write_string(version, length, copy);
}

EXPORT int nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length) {
    int rc = enter(F_PROCESS_NAME, 1, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    if (!name || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
    rc = NVML_ERROR_NOT_FOUND;
    pthread_mutex_lock(&g_mutex);
    for (unsigned int i = 0; i < g_sc.proc_count; i++) {
        if (g_sc.procs[i].pid == pid && g_sc.procs[i].name[0]) {
            snprintf(name, length, "%s", g_sc.procs[i].name);   /* NVML truncates long names */
            rc = NVML_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&g_mutex);
    return rc;
}

static int get_count(int function, unsigned int *count) {
    int rc = enter(function, 1, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&g_mutex);
    *count = g_sc.gpu_count;
    pthread_mutex_unlock(&g_mutex);
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetCount(unsigned int *count) { return get_count(F_COUNT, count); }
EXPORT int nvmlDeviceGetCount_v2(unsigned int *count) { return get_count(F_COUNT_V2, count); }

static int get_handle(int function, unsigned int index, nvmlDevice_t *device) {
    int rc = enter(function, 1, NULL, 0, NULL);
    if (rc != NVML_SUCCESS) return rc;
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&g_mutex);
    if (index >= g_sc.gpu_count) rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (g_sc.gpus[index].handle_rc != NVML_SUCCESS) rc = g_sc.gpus[index].handle_rc;
    else *device = &g_devices[index];
    pthread_mutex_unlock(&g_mutex);
    return rc;
}

EXPORT int nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return get_handle(F_HANDLE, index, device);
}
EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    return get_handle(F_HANDLE_V2, index, device);
}

EXPORT int nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    fake_gpu_t gpu;
    int rc = enter(F_NAME, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (gpu.unsupported & UNSUP_NAME) return NVML_ERROR_NOT_SUPPORTED;
    return write_string(name, length, gpu.name);
}

EXPORT int nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    fake_gpu_t gpu;
    int rc = enter(F_UUID, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (gpu.unsupported & UNSUP_UUID) return NVML_ERROR_NOT_SUPPORTED;
    return write_string(uuid, length, gpu.uuid);
}

static unsigned long long free_bytes(const fake_gpu_t *gpu) {
    unsigned long long taken = gpu->used + gpu->reserved;
    return taken >= gpu->total ? 0 : gpu->total - taken;
}

EXPORT int nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    fake_gpu_t gpu;
    int rc = enter(F_MEMORY, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_MEMORY) return NVML_ERROR_NOT_SUPPORTED;
    /* v1 counts the driver's reserved memory as used, as real drivers do. */
    memory->total = gpu.total;
    memory->used = gpu.used + gpu.reserved;
    memory->free = free_bytes(&gpu);
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    fake_gpu_t gpu;
    int rc = enter(F_MEMORY_V2, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (gpu.memory_v2_rc != NVML_SUCCESS) return gpu.memory_v2_rc;
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (gpu.unsupported & UNSUP_MEMORY) return NVML_ERROR_NOT_SUPPORTED;
    memory->total = gpu.total;
    memory->reserved = gpu.reserved;
    memory->used = gpu.used;
    memory->free = free_bytes(&gpu);
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    fake_gpu_t gpu;
    int rc = enter(F_UTILIZATION, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_UTILIZATION) return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = gpu.utilization;
    utilization->memory = gpu.memory_utilization;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor, unsigned int *temperature) {
    fake_gpu_t gpu;
    int rc = enter(F_TEMPERATURE, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!temperature || sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_TEMPERATURE) return NVML_ERROR_NOT_SUPPORTED;
    *temperature = gpu.temperature_c;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_v1_t *temperature) {
    fake_gpu_t gpu;
    int rc = enter(F_TEMPERATURE_V, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!temperature) return NVML_ERROR_INVALID_ARGUMENT;
    if (temperature->version != NVML_TEMPERATURE_V1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (temperature->sensorType != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_TEMPERATURE) return NVML_ERROR_NOT_SUPPORTED;
    temperature->temperature = (int)gpu.temperature_c;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw) {
    fake_gpu_t gpu;
    int rc = enter(F_POWER, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!power_mw) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_POWER) return NVML_ERROR_NOT_SUPPORTED;
    *power_mw = gpu.power_mw;
    return NVML_SUCCESS;
}

/* NVML's two-call protocol: too small a buffer (or none) answers INSUFFICIENT_SIZE with the count. */
static int running_processes(int function, int kind, nvmlDevice_t device, unsigned int *count,
                             nvmlProcessInfo_t *infos) {
    fake_gpu_t gpu;
    int rc = enter(function, 1, device, 1, &gpu);
    if (rc != NVML_SUCCESS) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.unsupported & UNSUP_PROCESSES) return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&g_mutex);
    unsigned int capacity = *count, found = 0;
    for (unsigned int i = 0; i < g_sc.proc_count; i++) {
        const fake_proc_t *proc = &g_sc.procs[i];
        if (proc->gpu != device->index || !(proc->kinds & kind)) continue;
        if (infos && found < capacity) {
            infos[found].pid = proc->pid;
            infos[found].usedGpuMemory = proc->used;
            infos[found].gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            infos[found].computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        }
        found++;
    }
    pthread_mutex_unlock(&g_mutex);
    *count = found;
    if (found == 0) return NVML_SUCCESS;
    if (!infos || capacity < found) return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(F_COMPUTE_V2, KIND_COMPUTE, device, count, infos);
}
EXPORT int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(F_COMPUTE_V3, KIND_COMPUTE, device, count, infos);
}
EXPORT int nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(F_GRAPHICS_V2, KIND_GRAPHICS, device, count, infos);
}
EXPORT int nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(F_GRAPHICS_V3, KIND_GRAPHICS, device, count, infos);
}
