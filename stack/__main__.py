"""python -m stack up|demo|down|status|env"""

from stack.cli import main

main()
