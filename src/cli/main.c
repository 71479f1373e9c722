/* xdistill command-line entry: dispatches `xdistill <command> [args]`. */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "ops/cpu/threads.h"

static const xd_command commands[] = {
#define XD_CMD(name, fn, help) {name, fn, help},
#include "cli/commands.def"
#undef XD_CMD
};

static void usage(FILE *fp) {
  fprintf(fp, "xdistill %s — distil a Transformer LLM into a hybrid xLSTM student\n\nusage: xdistill <command> [options]\n\ncommands:\n", xd_version());
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) fprintf(fp, "  %-14s %s\n", commands[i].name, commands[i].help);
  fprintf(fp, "\n`xdistill <command> --help` describes each command.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return 2; }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
  if (!strcmp(argv[1], "--version")) { printf("xdistill %s\n", xd_version()); return 0; }
  /* OpenMP owns the cores and OpenBLAS runs single-threaded inside (ops/cpu/threads.h). */
  xd_set_threads(0);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "xdistill: error: unknown command '%s' (see `xdistill --help`)\n", argv[1]);
  return 2;
}
