from bot.devtools.slack_signing import *  # noqa: F403  (the implementation ships in the package)
