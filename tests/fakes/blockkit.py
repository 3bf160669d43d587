from bot.devtools.blockkit_check import *  # noqa: F403  (the implementation ships in the package)
