# A gateway node built from its environment: `twistd -ny tac/wsha.tac`.
# Settings come from WSHA_<NAME> variables (WSHA_PORT, WSHA_REDIS, WSHA_KAFKA,
# WSHA_JWT_SECRET...) over an optional JSON file named by WSHA_CONFIG_FILE.
from twisted.application import service

from wsha.config import NodeConfig
from wsha.tap import node_from_config

application = service.Application("wsha")
node_from_config(NodeConfig.from_environment()).setServiceParent(application)
