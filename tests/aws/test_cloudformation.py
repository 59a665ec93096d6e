"""ops/aws/fedbus.yaml, the AWS deployment (docs/aws.md), checked without an AWS account.

Three kinds of checks:

- cfn-lint reports nothing on it: no errors, no warnings, no informational findings.
- The stack is created in moto, twice (the defaults, and every optional feature on), and boto3 reads back what
  was made: Auto Scaling groups and their sizes, scaling policies, load balancers and listeners, alarms and their
  topic, the database, the broker, security groups, outputs, the rendered UserData.
  moto 5.2.5's CloudFormation has no model for AWS::AmazonMQ::Broker, AWS::SecretsManager::Secret,
  AWS::CloudWatch::Alarm and AWS::AutoScaling::ScalingPolicy, none for Fn::Cidr and none for the GetAtt
  attributes LoadBalancerFullName and TargetGroupFullName. `_fill_moto_gaps` adds them: each of those resources
  is made by the matching boto3 call (CreateBroker, CreateSecret, PutMetricAlarm, PutScalingPolicy) with the
  properties moto resolved, so botocore checks them against the service's API and moto stores them. It skips
  nothing else: moto warns about (and would skip) any other resource type, and the test fails on that warning.
  Inline security group egress rules are not applied by moto; the structural checks cover them.
- Structural checks of the parsed template: least privilege of every IAM statement, which secrets each tier
  reads against what its UserData uses, every ingress and egress rule against the intended matrix, parameter
  constraints, the FEDBUS_* names against ops/settings.py, the queue names against broker/topology.py, and
  `bash -n` on each tier's UserData.

cfn-lint and moto are development dependencies; where one is missing the tests that need it are skipped,
unless FEDBUS_REQUIRE_SERVICES=1, which makes that a failure.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import json
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from broker.topology import AGGREGATOR_QUEUE, DEFAULT
from ops.settings import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ops" / "aws" / "fedbus.yaml"
REGION = "us-east-1"  # moto's Fn::GetAZs "" answers this region's zones
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fedbus:1.0"
TIERS = ("Coordinator", "Aggregator", "Client", "Api")
SECRET_PARAMETERS = ("GrpcTlsSecretArn", "GrpcCaSecretArn")


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def _need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _unavailable(f"{module} is not installed ({exc})")
        raise  # not reached: _unavailable skips or fails


# ---- the template as data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template parsed by cfn-lint's decoder (it knows !Ref, !Sub, ...), as plain dicts and lists."""
    decode = _need("cfnlint.decode")
    parsed, problems = decode.decode(str(TEMPLATE))
    assert not problems, [str(p) for p in problems]
    return json.loads(json.dumps(parsed))


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _branches(value: Any) -> Iterator[Any]:
    """Every value `value` can take, each Fn::If expanded into both of its branches."""
    if isinstance(value, dict) and "Fn::If" in value:
        for branch in value["Fn::If"][1:]:
            yield from _branches(branch)
    elif isinstance(value, list):
        options: list[list[Any]] = [[]]
        for item in value:
            options = [[*done, choice] for done in options for choice in _branches(item)]
        yield from options
    else:
        yield value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _user_data(template: dict[str, Any], tier: str) -> tuple[str, dict[str, Any]]:
    """The Fn::Sub template of a tier's UserData and its variables."""
    data = template["Resources"][f"{tier}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    return text, variables


def _sub_names(text: str) -> set[str]:
    return set(re.findall(r"\$\{([^!}][^}]*)\}", text))


# ---- cfn-lint ------------------------------------------------------------------------------------------------


def test_cfn_lint_reports_nothing() -> None:
    api = _need("cfnlint.api")
    # The default rules (errors and warnings) plus the informational ones, in two regions (instance types and
    # zones differ by region). Experimental rules (--include-experimental) are left out: they are proposals.
    config = api.ManualArgs(regions=[REGION, "eu-west-1"], include_checks=["I"])
    findings = api.lint(TEMPLATE.read_text(), config=config)
    assert not findings, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in findings)


def test_no_yaml_aliases() -> None:
    """CloudFormation refuses templates with YAML anchors or aliases (tools that accept them hide that)."""
    yaml = _need("yaml")  # tokens only: no loader needs to know the CloudFormation tags
    tokens = yaml.scan(TEMPLATE.read_text())
    assert not [t for t in tokens if isinstance(t, yaml.AliasToken | yaml.AnchorToken)]


# ---- structure: IAM ------------------------------------------------------------------------------------------

# The only actions granted on every resource: they have no resource-level permissions at all.
NO_RESOURCE_LEVEL = {
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",  # and only with the namespace condition
}


def _statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        documents = [properties.get("PolicyDocument"), properties.get("AssumeRolePolicyDocument")]
        documents += [p["PolicyDocument"] for p in properties.get("Policies", [])]
        for document in filter(None, documents):
            for statement in document["Statement"]:
                yield name, statement


def test_iam_statements_are_least_privilege(template: dict[str, Any]) -> None:
    seen = 0
    for name, statement in _statements(template):
        seen += 1
        assert statement["Effect"] == "Allow", name
        assert "NotAction" not in statement and "NotResource" not in statement, name
        actions = _as_list(statement["Action"])
        for action in actions:
            assert action != "*" and not action.endswith(":*") and "*" not in action, (name, action)
        if "Principal" in statement:  # a trust policy: EC2 may assume the role, nobody else
            assert statement["Principal"] == {"Service": "ec2.amazonaws.com"} and actions == ["sts:AssumeRole"]
            continue
        for resources in _branches(statement["Resource"]):
            if "*" in _as_list(resources):
                assert set(actions) <= NO_RESOURCE_LEVEL, (name, actions)
            for resource in _as_list(resources):
                assert not (isinstance(resource, str) and resource.endswith(":*")), (name, resource)
        if "cloudwatch:PutMetricData" in actions:
            assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "fedbus"}}, name
    assert seen >= 10


def _readable_secrets(template: dict[str, Any], tier: str) -> set[str]:
    """The secrets (resources and ARN parameters) a tier's role may read, over every branch."""
    readable: set[str] = set()
    for policy in template["Resources"][f"{tier}Role"]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if "secretsmanager:GetSecretValue" in _as_list(statement["Action"]):
                for resources in _branches(statement["Resource"]):
                    readable |= {r["Ref"] for r in _as_list(resources)}
    return readable


def test_each_tier_reads_exactly_the_secrets_its_user_data_uses(template: dict[str, Any]) -> None:
    secrets = set(_resources(template, "AWS::SecretsManager::Secret")) | set(SECRET_PARAMETERS)
    for tier in TIERS:
        text, _ = _user_data(template, tier)
        used = _sub_names(text) & secrets
        assert _readable_secrets(template, tier) == used, tier
    assert _readable_secrets(template, "Aggregator") == {"DatabaseSecret", "AggregatorBrokerSecret"}
    assert _readable_secrets(template, "Client") == {"ClientBrokerSecret", "EnrollmentSecret", "GrpcCaSecretArn"}


def test_only_the_coordinator_publishes_metrics(template: dict[str, Any]) -> None:
    publishers = {name for name, s in _statements(template) if "cloudwatch:PutMetricData" in _as_list(s["Action"])}
    assert publishers == {"CoordinatorRole"}


# ---- structure: security groups ------------------------------------------------------------------------------

# (group, port, source): every ingress rule the template may create. A source is a security group, a CIDR
# parameter ("cidr:Name") or the NAT gateway's address ("cidr:nat").
INGRESS = {
    ("CoordinatorLoadBalancerSecurityGroup", 50051, "cidr:GrpcIngressCidr"),  # client sites
    ("CoordinatorLoadBalancerSecurityGroup", 50051, "cidr:nat"),  # cloud-hosted clients, public NLB
    ("CoordinatorLoadBalancerSecurityGroup", 50051, "ClientSecurityGroup"),  # cloud-hosted clients, internal NLB
    ("CoordinatorSecurityGroup", 50051, "CoordinatorLoadBalancerSecurityGroup"),
    ("ApiLoadBalancerSecurityGroup", 80, "cidr:ApiIngressCidr"),  # without a certificate
    ("ApiLoadBalancerSecurityGroup", 443, "cidr:ApiIngressCidr"),  # with one
    ("ApiSecurityGroup", 8080, "ApiLoadBalancerSecurityGroup"),
    ("DatabaseSecurityGroup", 5432, "CoordinatorSecurityGroup"),
    ("DatabaseSecurityGroup", 5432, "AggregatorSecurityGroup"),
    ("DatabaseSecurityGroup", 5432, "ApiSecurityGroup"),
    ("BrokerSecurityGroup", 5671, "CoordinatorSecurityGroup"),
    ("BrokerSecurityGroup", 5671, "AggregatorSecurityGroup"),
    ("BrokerSecurityGroup", 5671, "ApiSecurityGroup"),
    ("BrokerSecurityGroup", 5671, "ClientSecurityGroup"),
    ("BrokerSecurityGroup", 5671, "cidr:RemoteSiteCidr"),  # client sites over VPN/peering, when given
    ("BrokerSecurityGroup", 443, "CoordinatorSecurityGroup"),  # management API: vhost and users
    ("ClaimsSecurityGroup", 2049, "ClientSecurityGroup"),  # EFS: the simulated clients' share claims
}
# Only these may be open to the whole internet (when their CIDR parameter allows it).
WORLD_OPEN = {("CoordinatorLoadBalancerSecurityGroup", 50051), ("ApiLoadBalancerSecurityGroup", 80)}
WORLD_OPEN |= {("ApiLoadBalancerSecurityGroup", 443)}


def _source(rule: dict[str, Any]) -> str:
    if "SourceSecurityGroupId" in rule:
        return rule["SourceSecurityGroupId"]["Ref"]
    cidr = rule["CidrIp"]
    if isinstance(cidr, dict) and "Ref" in cidr:
        return f"cidr:{cidr['Ref']}"
    if isinstance(cidr, dict) and cidr.get("Fn::Sub") == "${NatAddress}/32":
        return "cidr:nat"
    return f"cidr:{cidr}"


def _may_be_world(template: dict[str, Any], source: str) -> bool:
    """Whether a rule's source can be 0.0.0.0/0: a literal, or a parameter whose default or pattern allows it."""
    if not source.startswith("cidr:"):
        return False
    name = source.removeprefix("cidr:")
    parameter = template["Parameters"].get(name)
    if parameter is None:
        return name != "nat" and ipaddress.ip_network(name).prefixlen == 0
    return parameter.get("Default") == "0.0.0.0/0" or bool(re.fullmatch(parameter["AllowedPattern"], "0.0.0.0/0"))


def test_ingress_rules_are_exactly_the_intended_ones(template: dict[str, Any]) -> None:
    rules: set[tuple[str, int, str]] = set()
    for name, group in _resources(template, "AWS::EC2::SecurityGroup").items():
        assert "SecurityGroupIngress" not in group["Properties"], f"{name}: ingress rules are standalone resources"
    for name, resource in _resources(template, "AWS::EC2::SecurityGroupIngress").items():
        rule = resource["Properties"]
        assert rule["IpProtocol"] == "tcp", name
        for low, high in zip(_branches(rule["FromPort"]), _branches(rule["ToPort"]), strict=True):
            assert low == high, f"{name}: one port per rule"
            rules.add((rule["GroupId"]["Ref"], low, _source(rule)))
    assert rules == INGRESS
    for group, port, source in rules:
        if _may_be_world(template, source):
            assert (group, port) in WORLD_OPEN, (group, port, source)
    assert not _may_be_world(template, "cidr:RemoteSiteCidr")  # its pattern refuses /0 to /7


def test_egress_rules_reach_only_what_each_tier_connects_to(template: dict[str, Any]) -> None:
    broker = "BrokerSecurityGroup"
    expected = {
        "CoordinatorLoadBalancerSecurityGroup": {(50051, "CoordinatorSecurityGroup")},
        "ApiLoadBalancerSecurityGroup": {(8080, "ApiSecurityGroup")},
        # AWS APIs, the image registry, packages and data sets over HTTPS; the database; the broker
        "CoordinatorSecurityGroup": {(443, "0.0.0.0/0"), (5432, "DatabaseSecurityGroup"), (5671, broker)},
        "AggregatorSecurityGroup": {(443, "0.0.0.0/0"), (5432, "DatabaseSecurityGroup"), (5671, broker)},
        "ApiSecurityGroup": {(443, "0.0.0.0/0"), (5432, "DatabaseSecurityGroup"), (5671, broker)},
        "ClientSecurityGroup": {
            (443, "0.0.0.0/0"),
            (5671, broker),
            (2049, "ClaimsSecurityGroup"),
            (50051, "0.0.0.0/0"),  # the internet-facing NLB's public address, through the NAT gateway
            (50051, "CoordinatorLoadBalancerSecurityGroup"),  # the internal NLB
        },
        # "nothing": a rule to 127.0.0.1/32 replaces the default allow-all egress rule
        "DatabaseSecurityGroup": {(-1, "127.0.0.1/32")},
        "BrokerSecurityGroup": {(-1, "127.0.0.1/32")},
        "ClaimsSecurityGroup": {(-1, "127.0.0.1/32")},
    }
    found: dict[str, set[tuple[int, str]]] = {}
    for name, group in _resources(template, "AWS::EC2::SecurityGroup").items():
        for rules in _branches(group["Properties"]["SecurityGroupEgress"]):
            for rule in rules:
                port = rule.get("FromPort", -1)
                assert rule.get("ToPort", -1) == port, name
                target = rule.get("CidrIp") or rule["DestinationSecurityGroupId"]["Ref"]
                found.setdefault(name, set()).add((port, target))
    assert found == expected


# ---- structure: parameters, names, UserData --------------------------------------------------------------------


def test_parameters_are_described_and_constrained(template: dict[str, Any]) -> None:
    for name, parameter in template["Parameters"].items():
        assert parameter.get("Description"), name
        assert "password" not in name.lower(), f"{name}: passwords come from Secrets Manager"
        if parameter["Type"] == "String":
            assert "AllowedPattern" in parameter or "AllowedValues" in parameter, name
            default = parameter.get("Default")
            if default is not None and "AllowedPattern" in parameter:
                assert re.fullmatch(parameter["AllowedPattern"], default), name
        elif parameter["Type"] == "Number":
            assert {"MinValue", "MaxValue"} <= parameter.keys() or "AllowedValues" in parameter, name
    assert "Default" not in template["Parameters"]["ApiIngressCidr"]  # who may reach the API: a decision
    assert re.fullmatch(template["Parameters"]["ImageUri"]["AllowedPattern"], IMAGE)


def test_no_password_is_written_in_the_template(template: dict[str, Any]) -> None:
    database = template["Resources"]["Database"]["Properties"]
    broker = template["Resources"]["Broker"]["Properties"]
    for value in (database["MasterUserPassword"], broker["Users"][0]["Password"]):
        assert re.fullmatch(r"\{\{resolve:secretsmanager:\$\{\w+Secret\}:SecretString:password\}\}", value["Fn::Sub"])
    for name, secret in _resources(template, "AWS::SecretsManager::Secret").items():
        generated = secret["Properties"]["GenerateSecretString"]
        assert generated["ExcludePunctuation"] is True and generated["PasswordLength"] >= 32, name
        assert "SecretString" not in secret["Properties"], name


def test_database_is_protected(template: dict[str, Any]) -> None:
    database = template["Resources"]["Database"]
    assert (database["DeletionPolicy"], database["UpdateReplacePolicy"]) == ("Snapshot", "Snapshot")
    assert database["Properties"]["DeletionProtection"] == {"Ref": "DatabaseDeletionProtection"}
    assert template["Parameters"]["DatabaseDeletionProtection"]["Default"] == "true"
    assert database["Properties"]["StorageEncrypted"] is True and database["Properties"]["PubliclyAccessible"] is False
    assert database["Properties"]["VPCSecurityGroups"] == [{"Ref": "DatabaseSecurityGroup"}]


def test_settings_are_fedbus_variables(template: dict[str, Any]) -> None:
    known = {f"FEDBUS_{name}" for name in VARIABLES} | {"FEDBUS_API_TOKENS"}  # the API's: services/api/settings.py
    text = TEMPLATE.read_text()
    used = set(re.findall(r"\bFEDBUS_[A-Z_]+\b", text))
    assert used <= known, used - known
    assert {"FEDBUS_DATABASE_URL", "FEDBUS_AMQP_URL", "FEDBUS_GRPC_ADDRESS", "FEDBUS_SHARE"} <= used


def test_queue_names_are_the_topology_s(template: dict[str, Any]) -> None:
    dimensions = template["Resources"]["DeadLettersAlarm"]["Properties"]["Dimensions"]
    assert {"Name": "Queue", "Value": DEFAULT.dead_letters.name} in dimensions
    metrics = template["Resources"]["AggregatorBacklogPolicy"]["Properties"]["TargetTrackingConfiguration"]
    depth = metrics["CustomizedMetricSpecification"]["Metrics"][0]["MetricStat"]["Metric"]
    assert {"Name": "Queue", "Value": AGGREGATOR_QUEUE} in depth["Dimensions"]
    assert {"Name": "VirtualHost", "Value": "fedbus"} in depth["Dimensions"]


def _rendered(template: dict[str, Any], tier: str) -> str:
    """A tier's UserData with ${Common} inserted and every other ${...} replaced by a placeholder."""
    text, variables = _user_data(template, tier)
    common = template["Mappings"]["UserData"]["Common"]["Script"]
    assert "${" not in common  # a Fn::Sub variable: it would not be substituted
    assert variables["Common"] == {"Fn::FindInMap": ["UserData", "Common", "Script"]}
    text = text.replace("${Common}", common)
    text = re.sub(r"\$\{![^}]*\}", lambda m: "${" + m.group(0)[3:], text)
    return re.sub(r"\$\{[^}]+\}", "placeholder", text)


@pytest.mark.parametrize("tier", TIERS)
def test_user_data_is_bash_that_runs_the_role(template: dict[str, Any], tier: str) -> None:
    script = _rendered(template, tier)
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    role = {"Coordinator": "coordinator", "Aggregator": "aggregator", "Client": "client"}
    command = role.get(tier, "api --host 0.0.0.0 --port 8080")
    assert re.search(rf'^service fedbus-{tier.lower()} ("[^"]*"|\S+) {re.escape(command)}$', script, re.M), tier
    assert f"cat >/etc/fedbus/fedbus-{tier.lower()}.env <<EOF" in script  # the settings `service` hands it
    if tier == "Coordinator":  # the one-shot migration runs before the coordinator starts
        assert script.index(" db upgrade;") < script.index("service fedbus-coordinator")


def test_broker_users_are_those_of_the_compose_definitions(template: dict[str, Any]) -> None:
    """The coordinator creates the RabbitMQ users with the tags and permissions of ops/rabbitmq/definitions.json."""
    definitions = json.loads((ROOT / "ops" / "rabbitmq" / "definitions.json").read_text())
    tags = {u["name"]: u["tags"] for u in definitions["users"]}
    wanted = {
        p["user"]: (tags[p["user"]], p["configure"], p["write"], p["read"])
        for p in definitions["permissions"]
        if p["vhost"] == "fedbus" and p["user"] != "admin"  # Amazon MQ makes the administrator
    }
    text, _ = _user_data(template, "Coordinator")
    made = {}
    for line in re.findall(r"^user (\w+) \$\{(\w+)\} (.*)$", text, re.M):
        name, secret, rest = line
        assert secret == f"{name.capitalize()}BrokerSecret", name
        made[name] = tuple(re.findall(r"'([^']*)'|(\w+)", rest))
    assert {n: tuple(a or b for a, b in fields) for n, fields in made.items()} == wanted


# ---- the stack in moto -----------------------------------------------------------------------------------------


def _fill_moto_gaps(patch: pytest.MonkeyPatch) -> None:
    """CloudFormation models for the resource types, the function and the attributes moto 5.2.5 lacks.

    The patches of moto's own models and parser are undone with `patch`; the four added models stay
    registered (they only add resource types moto has no model for).
    """
    import boto3
    from moto.cloudformation import parsing
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
    from moto.core.common_models import CloudFormationModel
    from moto.elbv2.models import FakeLoadBalancer, FakeTargetGroup, elbv2_backends
    from moto.iam.models import Role

    def client(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region)

    class Made:
        """What one boto3 call made: its physical id (Ref) and attributes (GetAtt)."""

        type_name = ""
        name_property = ""

        def __init__(self, physical_id: str, attributes: dict[str, Any]) -> None:
            self.physical_id = physical_id
            self.attributes = attributes

        @property
        def physical_resource_id(self) -> str:
            return self.physical_id

        @classmethod
        def cloudformation_type(cls) -> str:
            return cls.type_name

        @classmethod
        def cloudformation_name_type(cls) -> str:
            return cls.name_property

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return True

        def get_cfn_attribute(self, attribute_name: str) -> Any:
            if attribute_name not in self.attributes:
                raise UnformattedGetAttTemplateException()
            return self.attributes[attribute_name]

        @classmethod
        def update_from_cloudformation_json(
            cls, original_resource: Any, new_resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str
        ) -> Any:
            """A replacement, as CloudFormation does for these types: made again from the new properties."""
            # each subclass below is also a CloudFormationModel and defines create_from_cloudformation_json
            return cls.create_from_cloudformation_json(new_resource_name, cfn, account_id, region_name)  # type: ignore[attr-defined]

        @classmethod
        def delete_from_cloudformation_json(cls, *args: Any, **kwargs: Any) -> None:
            return None

        def is_created(self) -> bool:
            return True

    # Each directly a CloudFormationModel: moto finds its models with CloudFormationModel.__subclasses__().
    class Secret(Made, CloudFormationModel):
        type_name = "AWS::SecretsManager::Secret"
        name_property = "Name"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
        ) -> Secret:
            properties = dict(cfn["Properties"])
            secrets = client("secretsmanager", region_name)
            generate = properties.pop("GenerateSecretString", None)
            if generate is not None:  # what CloudFormation does: a random value under GenerateStringKey
                options = {k: v for k, v in generate.items() if k not in ("SecretStringTemplate", "GenerateStringKey")}
                document = json.loads(generate["SecretStringTemplate"])
                document[generate["GenerateStringKey"]] = secrets.get_random_password(**options)["RandomPassword"]
                properties["SecretString"] = json.dumps(document)
            made = secrets.create_secret(Name=properties.pop("Name", resource_name), **properties)
            return cls(made["ARN"], {"Id": made["ARN"]})

    class Broker(Made, CloudFormationModel):
        type_name = "AWS::AmazonMQ::Broker"
        name_property = "BrokerName"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
        ) -> Broker:
            properties = dict(cfn["Properties"])
            properties["Tags"] = {t["Key"]: t["Value"] for t in properties.get("Tags", [])}
            mq = client("mq", region_name)
            made = mq.create_broker(**properties)
            described = mq.describe_broker(BrokerId=made["BrokerId"])
            amqp = [e for i in described["BrokerInstances"] for e in i["Endpoints"] if e.startswith("amqps://")]
            return cls(made["BrokerId"], {"Arn": made["BrokerArn"], "Id": made["BrokerId"], "AmqpEndpoints": amqp})

    class Alarm(Made, CloudFormationModel):
        type_name = "AWS::CloudWatch::Alarm"
        name_property = "AlarmName"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
        ) -> Alarm:
            properties = dict(cfn["Properties"])
            properties["AlarmName"] = properties.get("AlarmName", resource_name)
            properties["Threshold"] = float(properties["Threshold"])
            cloudwatch = client("cloudwatch", region_name)
            cloudwatch.put_metric_alarm(**properties)
            arn = cloudwatch.describe_alarms(AlarmNames=[properties["AlarmName"]])["MetricAlarms"][0]["AlarmArn"]
            return cls(properties["AlarmName"], {"Arn": arn})

    class ScalingPolicy(Made, CloudFormationModel):
        type_name = "AWS::AutoScaling::ScalingPolicy"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
        ) -> ScalingPolicy:
            autoscaling = client("autoscaling", region_name)
            autoscaling.put_scaling_policy(PolicyName=resource_name, **cfn["Properties"])
            # read back: moto 5.2.5 answers PutScalingPolicy with "PolicyArn", which botocore drops
            group = cfn["Properties"]["AutoScalingGroupName"]
            found = autoscaling.describe_policies(AutoScalingGroupName=group, PolicyNames=[resource_name])
            arn = found["ScalingPolicies"][0]["PolicyARN"]
            return cls(arn, {"Arn": arn, "PolicyName": resource_name})

    # moto's load balancer model makes every load balancer an application one and drops its attributes;
    # neither it nor the target group's answers GetAtt LoadBalancerFullName / TargetGroupFullName.
    def load_balancer(
        cls: Any, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        properties = cfn["Properties"]
        elbv2 = client("elbv2", region_name)
        given = {k: properties[k] for k in ("Type", "Scheme", "Subnets", "SecurityGroups") if k in properties}
        arn = elbv2.create_load_balancer(Name=resource_name, **given)["LoadBalancers"][0]["LoadBalancerArn"]
        if "LoadBalancerAttributes" in properties:
            elbv2.modify_load_balancer_attributes(LoadBalancerArn=arn, Attributes=properties["LoadBalancerAttributes"])
        return elbv2_backends[account_id][region_name].load_balancers[arn]

    load_balancer_attribute = FakeLoadBalancer.get_cfn_attribute

    def load_balancer_full_name(self: Any, attribute_name: str) -> Any:
        if attribute_name == "LoadBalancerFullName":  # arn:...:loadbalancer/net/name/id -> net/name/id
            return self.arn.split(":loadbalancer/", 1)[1]
        return load_balancer_attribute(self, attribute_name)

    def target_group_full_name(self: Any, attribute_name: str) -> Any:
        if attribute_name == "TargetGroupFullName":  # arn:...:targetgroup/name/id -> targetgroup/name/id
            return "targetgroup/" + self.arn.split(":targetgroup/", 1)[1]
        raise UnformattedGetAttTemplateException()

    # moto's role model leaves out ManagedPolicyArns.
    role = Role.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def role_with_policies(
        cls: Any, resource_name: str, cfn: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        made = role(cls, resource_name, cfn, account_id, region_name, **kwargs)
        for arn in cfn["Properties"].get("ManagedPolicyArns", []):
            client("iam", region_name).attach_role_policy(RoleName=made.name, PolicyArn=arn)
        return made

    # moto's parser has no Fn::Cidr. clean_json recurses through the module's name, so nested ones are seen too.
    clean_json = parsing.clean_json

    def with_cidr(resource_json: Any, resources_map: Any) -> Any:
        if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
            block, count, bits = (clean_json(v, resources_map) for v in resource_json["Fn::Cidr"])
            network = ipaddress.ip_network(block)
            subnets = network.subnets(new_prefix=network.max_prefixlen - int(bits))
            return [str(next(subnets)) for _ in range(int(count))]
        return clean_json(resource_json, resources_map)

    patch.setattr(FakeLoadBalancer, "create_from_cloudformation_json", classmethod(load_balancer))
    patch.setattr(FakeLoadBalancer, "get_cfn_attribute", load_balancer_full_name)
    patch.setattr(FakeTargetGroup, "get_cfn_attribute", target_group_full_name, raising=False)
    patch.setattr(Role, "create_from_cloudformation_json", classmethod(role_with_policies))
    patch.setattr(parsing, "clean_json", with_cidr)
    for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cached.cache_clear()


DEFAULTS = {"ImageUri": IMAGE, "ApiIngressCidr": "203.0.113.0/24"}
SERVICES = ("cloudformation", "autoscaling", "elbv2", "cloudwatch", "rds", "mq", "ec2", "sns", "secretsmanager")
SERVICES += ("acm", "iam", "efs")


@pytest.fixture(scope="module")
def aws(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Two stacks in moto: "plain" (the defaults) and "full" (every optional feature on); boto3 clients.

    moto gets the template as JSON, as cfn-lint's decoder read it: moto's own YAML loader splits
    `!GetAtt Database.Endpoint.Address` at every dot, CloudFormation at the first.
    """
    moto = _need("moto")
    _need("boto3")
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        with moto.mock_aws():
            _fill_moto_gaps(patch)
            clients = {service: boto3.client(service, region_name=REGION) for service in SERVICES}
            secret = clients["secretsmanager"].create_secret(Name="fedbus-grpc-tls", SecretString="{}")["ARN"]
            ca = clients["secretsmanager"].create_secret(Name="fedbus-grpc-ca", SecretString="{}")["ARN"]
            certificate = clients["acm"].request_certificate(DomainName="api.fedbus.example.org")["CertificateArn"]
            full = {
                **DEFAULTS,
                "ImageRepositoryArn": "arn:aws:ecr:us-east-1:123456789012:repository/fedbus",
                "CoordinatorScheme": "internal",
                "RemoteSiteCidr": "10.200.0.0/16",
                "GrpcDomainName": "grpc.fedbus.example.org",
                "GrpcTlsSecretArn": secret,
                "GrpcCaSecretArn": ca,
                "ApiCertificateArn": certificate,
                "ClientCount": "5",
                "DatabaseMultiAz": "true",
                "BrokerDeploymentMode": "CLUSTER_MULTI_AZ",
                "AlarmEmail": "fedbus-alarms@example.org",
            }
            stacks = {}
            for stack, parameters in (("plain", DEFAULTS), ("full", full)):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # moto warns for a resource type it would skip
                    clients["cloudformation"].create_stack(
                        StackName=f"fedbus-{stack}",
                        TemplateBody=json.dumps(template),
                        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
                        Capabilities=["CAPABILITY_NAMED_IAM"],
                    )
                cloudformation = clients["cloudformation"]
                described = cloudformation.describe_stacks(StackName=f"fedbus-{stack}")["Stacks"][0]
                assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
                resources = cloudformation.list_stack_resources(StackName=f"fedbus-{stack}")["StackResourceSummaries"]
                stacks[stack] = {
                    "name": f"fedbus-{stack}",
                    # (moto also lists each resource whose condition is false, with empty ids)
                    "ids": {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if r["ResourceType"]},
                    "outputs": {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]},
                }
            yield {"clients": clients, **stacks}


def test_stacks_make_every_resource(aws: dict[str, Any], template: dict[str, Any]) -> None:
    conditional = {n for n, r in template["Resources"].items() if "Condition" in r}
    assert set(aws["full"]["ids"]) == set(template["Resources"]) - {"ApiHttpListener", "GrpcFromNat"}
    assert set(aws["plain"]["ids"]) == set(template["Resources"]) - conditional | {"GrpcFromNat", "ApiHttpListener"}


def test_auto_scaling_groups_have_the_intended_sizes(aws: dict[str, Any]) -> None:
    autoscaling = aws["clients"]["autoscaling"]
    for stack, clients in (("plain", 3), ("full", 5)):
        ids = aws[stack]["ids"]
        expected = {  # min, max, desired
            "CoordinatorGroup": (1, 1, 1),  # replaced when it dies, never two
            "AggregatorGroup": (1, 4, 1),
            "ClientGroup": (clients, clients, clients),
            "ApiGroup": (1, 3, 1),
        }
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ids[g] for g in expected])
        found = {g["AutoScalingGroupName"]: g for g in groups["AutoScalingGroups"]}
        for logical, sizes in expected.items():
            group = found[ids[logical]]
            assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == sizes, logical
            private = {ids["PrivateSubnet1"], ids["PrivateSubnet2"]}
            assert set(group["VPCZoneIdentifier"].split(",")) == private, logical
        coordinator, api = found[ids["CoordinatorGroup"]], found[ids["ApiGroup"]]
        assert coordinator["TargetGroupARNs"] == [ids["CoordinatorTargets"]]
        assert coordinator["HealthCheckType"] == "ELB"
        assert api["TargetGroupARNs"] == [ids["ApiTargets"]]


def test_aggregators_scale_on_queue_depth_and_cpu(aws: dict[str, Any]) -> None:
    autoscaling = aws["clients"]["autoscaling"]
    ids = aws["plain"]["ids"]
    policies = autoscaling.describe_policies(AutoScalingGroupName=ids["AggregatorGroup"])["ScalingPolicies"]
    by_arn = {p["PolicyARN"]: p for p in policies}
    assert set(by_arn) == {ids["AggregatorBacklogPolicy"], ids["AggregatorCpuPolicy"]}
    backlog = by_arn[ids["AggregatorBacklogPolicy"]]["TargetTrackingConfiguration"]
    assert backlog["TargetValue"] == 2
    metrics = {m["Id"]: m for m in backlog["CustomizedMetricSpecification"]["Metrics"]}
    depth = metrics["depth"]["MetricStat"]["Metric"]
    assert (depth["Namespace"], depth["MetricName"]) == ("AWS/AmazonMQ", "MessageCount")
    assert {d["Name"]: d["Value"] for d in depth["Dimensions"]} == {
        "Broker": "fedbus-plain-mq",
        "VirtualHost": "fedbus",
        "Queue": "fedbus.aggregator",
    }
    in_service = metrics["aggregators"]["MetricStat"]["Metric"]
    assert in_service["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": ids["AggregatorGroup"]}]
    assert metrics["backlog"]["ReturnData"] is True and "depth / aggregators" in metrics["backlog"]["Expression"]
    cpu = by_arn[ids["AggregatorCpuPolicy"]]["TargetTrackingConfiguration"]
    assert cpu["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    assert cpu["TargetValue"] == 60
    api = autoscaling.describe_policies(AutoScalingGroupName=ids["ApiGroup"])["ScalingPolicies"]
    assert [p["PolicyARN"] for p in api] == [ids["ApiCpuPolicy"]]
    assert api[0]["TargetTrackingConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ASGAverageCPUUtilization"
    }


def test_load_balancers_and_listeners(aws: dict[str, Any]) -> None:
    elbv2 = aws["clients"]["elbv2"]
    for stack, scheme, subnets, api_port in (
        ("plain", "internet-facing", ("PublicSubnet1", "PublicSubnet2"), 80),
        ("full", "internal", ("PrivateSubnet1", "PrivateSubnet2"), 443),
    ):
        ids = aws[stack]["ids"]
        nlb = elbv2.describe_load_balancers(LoadBalancerArns=[ids["CoordinatorLoadBalancer"]])["LoadBalancers"][0]
        assert (nlb["Type"], nlb["Scheme"]) == ("network", scheme)
        assert {z["SubnetId"] for z in nlb["AvailabilityZones"]} == {ids[s] for s in subnets}
        assert nlb["SecurityGroups"] == [ids["CoordinatorLoadBalancerSecurityGroup"]]
        (listener,) = elbv2.describe_listeners(LoadBalancerArn=nlb["LoadBalancerArn"])["Listeners"]
        assert (listener["Protocol"], listener["Port"]) == ("TCP", 50051)
        assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": ids["CoordinatorTargets"]}]
        (targets,) = elbv2.describe_target_groups(TargetGroupArns=[ids["CoordinatorTargets"]])["TargetGroups"]
        assert (targets["Protocol"], targets["Port"], targets["HealthCheckProtocol"]) == ("TCP", 50051, "TCP")

        alb = elbv2.describe_load_balancers(LoadBalancerArns=[ids["ApiLoadBalancer"]])["LoadBalancers"][0]
        assert (alb["Type"], alb["Scheme"]) == ("application", "internet-facing")
        (listener,) = elbv2.describe_listeners(LoadBalancerArn=alb["LoadBalancerArn"])["Listeners"]
        assert (listener["Protocol"], listener["Port"]) == (("HTTPS" if api_port == 443 else "HTTP"), api_port)
        assert listener["DefaultActions"][0]["TargetGroupArn"] == ids["ApiTargets"]
        (targets,) = elbv2.describe_target_groups(TargetGroupArns=[ids["ApiTargets"]])["TargetGroups"]
        assert (targets["Protocol"], targets["Port"], targets["HealthCheckPath"]) == ("HTTP", 8080, "/readyz")


def test_alarms_watch_the_intended_metrics_and_notify_the_topic(aws: dict[str, Any]) -> None:
    cloudwatch = aws["clients"]["cloudwatch"]
    ids = aws["plain"]["ids"]
    expected = {  # namespace, metric, statistic, comparison, threshold, dimensions
        "RoundsFailedAlarm": ("fedbus", "RoundsFailed", "Sum", "GreaterThanOrEqualToThreshold", 1,
                              {"Stack": "fedbus-plain"}),
        "DeadLettersAlarm": ("AWS/AmazonMQ", "MessageCount", "Maximum", "GreaterThanOrEqualToThreshold", 1,
                             {"Broker": "fedbus-plain-mq", "VirtualHost": "fedbus", "Queue": "fedbus.dead-letters"}),
        "CoordinatorUnhealthyAlarm": ("AWS/NetworkELB", "UnHealthyHostCount", "Maximum",
                                      "GreaterThanOrEqualToThreshold", 1, None),
        "CoordinatorMissingAlarm": ("AWS/NetworkELB", "HealthyHostCount", "Maximum", "LessThanThreshold", 1, None),
        "DatabaseCpuAlarm": ("AWS/RDS", "CPUUtilization", "Average", "GreaterThanThreshold", 80,
                             {"DBInstanceIdentifier": ids["Database"]}),
        "DatabaseStorageAlarm": ("AWS/RDS", "FreeStorageSpace", "Minimum", "LessThanThreshold", 5 * 2**30,
                                 {"DBInstanceIdentifier": ids["Database"]}),
    }  # fmt: skip
    alarms = cloudwatch.describe_alarms(AlarmNames=[ids[a] for a in expected])["MetricAlarms"]
    found = {a["AlarmName"]: a for a in alarms}
    nlb, targets = ids["CoordinatorLoadBalancer"], ids["CoordinatorTargets"]
    balancer = {
        "LoadBalancer": nlb.split(":loadbalancer/")[1],
        "TargetGroup": "targetgroup/" + targets.split(":targetgroup/")[1],
    }
    for logical, (namespace, metric, statistic, comparison, threshold, dimensions) in expected.items():
        alarm = found[ids[logical]]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (namespace, metric, statistic)
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (comparison, threshold), logical
        assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == (dimensions or balancer), logical
        assert alarm["AlarmActions"] == alarm["OKActions"] == [aws["plain"]["outputs"]["AlarmTopicArn"]], logical
    assert DEFAULT.dead_letters.name == "fedbus.dead-letters"

    sns = aws["clients"]["sns"]
    for stack, emails in (("plain", []), ("full", ["fedbus-alarms@example.org"])):
        topic = aws[stack]["outputs"]["AlarmTopicArn"]
        assert topic == aws[stack]["ids"]["AlarmTopic"]
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", e) for e in emails]


def test_database_is_private_encrypted_postgres(aws: dict[str, Any]) -> None:
    rds = aws["clients"]["rds"]
    for stack, multi_az in (("plain", False), ("full", True)):
        ids = aws[stack]["ids"]
        (db,) = rds.describe_db_instances(DBInstanceIdentifier=ids["Database"])["DBInstances"]
        assert (db["Engine"], db["EngineVersion"], db["DBName"]) == ("postgres", "16", "fedbus")
        assert db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
        # (moto drops DeletionProtection and VPCSecurityGroups: test_database_is_protected checks them)
        assert db["MultiAZ"] is multi_az
        assert db["Endpoint"]["Port"] == 5432
        subnets = {s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]}
        assert subnets == {ids["PrivateSubnet1"], ids["PrivateSubnet2"]}
        assert aws[stack]["outputs"]["DatabaseEndpoint"] == db["Endpoint"]["Address"]


def test_broker_is_private_rabbitmq(aws: dict[str, Any]) -> None:
    mq = aws["clients"]["mq"]
    for stack, mode, subnets in (
        ("plain", "SINGLE_INSTANCE", ("PrivateSubnet1",)),
        ("full", "CLUSTER_MULTI_AZ", ("PrivateSubnet1", "PrivateSubnet2")),
    ):
        ids = aws[stack]["ids"]
        broker = mq.describe_broker(BrokerId=ids["Broker"])
        assert broker["BrokerName"] == f"fedbus-{stack}-mq"  # the Broker dimension of the alarms and the policy
        assert (broker["EngineType"], broker["EngineVersion"], broker["DeploymentMode"]) == ("RABBITMQ", "3.13", mode)
        assert broker["PubliclyAccessible"] is False
        assert broker["SubnetIds"] == [ids[s] for s in subnets]
        assert broker["SecurityGroups"] == [ids["BrokerSecurityGroup"]]
        amqp = aws[stack]["outputs"]["BrokerAmqpEndpoints"]
        assert amqp and all(e.startswith("amqps://") for e in amqp.split(","))


def _ingress(ec2: Any, group_id: str) -> set[tuple[int, str]]:
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    rules = set()
    for permission in group["IpPermissions"]:
        assert permission["FromPort"] == permission["ToPort"]
        rules |= {(permission["FromPort"], r["CidrIp"]) for r in permission["IpRanges"]}
        rules |= {(permission["FromPort"], p["GroupId"]) for p in permission["UserIdGroupPairs"]}
    return rules


def test_security_groups_in_moto(aws: dict[str, Any]) -> None:
    ec2 = aws["clients"]["ec2"]
    ids = aws["plain"]["ids"]
    (gateway,) = ec2.describe_nat_gateways(NatGatewayIds=[ids["NatGateway"]])["NatGateways"]
    nat = gateway["NatGatewayAddresses"][0]["PublicIp"]
    databases = ("CoordinatorSecurityGroup", "AggregatorSecurityGroup", "ApiSecurityGroup")
    brokers = (*databases, "ClientSecurityGroup")
    expected = {
        "CoordinatorLoadBalancerSecurityGroup": {
            (50051, "0.0.0.0/0"),
            (50051, f"{nat}/32"),
            (50051, ids["ClientSecurityGroup"]),
        },
        "CoordinatorSecurityGroup": {(50051, ids["CoordinatorLoadBalancerSecurityGroup"])},
        "ApiLoadBalancerSecurityGroup": {(80, "203.0.113.0/24")},
        "ApiSecurityGroup": {(8080, ids["ApiLoadBalancerSecurityGroup"])},
        "DatabaseSecurityGroup": {(5432, ids[g]) for g in databases},
        "BrokerSecurityGroup": {(5671, ids[g]) for g in brokers} | {(443, ids["CoordinatorSecurityGroup"])},
        "ClaimsSecurityGroup": {(2049, ids["ClientSecurityGroup"])},
        "AggregatorSecurityGroup": set(),
        "ClientSecurityGroup": set(),
    }
    for logical, rules in expected.items():
        assert _ingress(ec2, ids[logical]) == rules, logical
    full = aws["full"]["ids"]
    assert (5671, "10.200.0.0/16") in _ingress(ec2, full["BrokerSecurityGroup"])
    assert _ingress(ec2, full["ApiLoadBalancerSecurityGroup"]) == {(443, "203.0.113.0/24")}


def test_roles_and_instance_profiles(aws: dict[str, Any]) -> None:
    iam = aws["clients"]["iam"]
    ids = aws["full"]["ids"]
    for tier in TIERS:
        role = ids[f"{tier}Role"]
        profile = iam.get_instance_profile(InstanceProfileName=ids[f"{tier}Profile"])["InstanceProfile"]
        assert [r["RoleName"] for r in profile["Roles"]] == [role]
        attached = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]}
        assert attached == {ids["InstanceBasePolicy"], ids["ImagePullPolicy"]}, tier
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == [tier.lower()]


def _launched_user_data(aws: dict[str, Any], stack: str, tier: str) -> str:
    ec2 = aws["clients"]["ec2"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=aws[stack]["ids"][f"{tier}LaunchTemplate"])
    data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    return base64.b64decode(data["UserData"]).decode()


def test_user_data_is_resolved_with_the_stack_s_names(aws: dict[str, Any]) -> None:
    for stack in ("plain", "full"):
        outputs, ids = aws[stack]["outputs"], aws[stack]["ids"]
        broker_host = outputs["BrokerAmqpEndpoints"].split(",")[0]
        for tier in TIERS:
            script = _launched_user_data(aws, stack, tier)
            assert "${" not in script.replace("${!", ""), f"{stack} {tier}: unresolved substitution"
            assert f"IMAGE={IMAGE}" in script and f"LOG_GROUP=/fedbus/fedbus-{stack}" in script
            assert "dnf install -y -q docker jq" in script  # the common part is in
            assert broker_host in script, tier
        client = _launched_user_data(aws, stack, "Client")
        assert f"FEDBUS_GRPC_ADDRESS={outputs['GrpcAddress']}" in client
        assert f"FEDBUS_SHARE=any/{5 if stack == 'full' else 3}" in client
        assert f"{ids['ClaimsFileSystem']}:/ /var/lib/fedbus/claims efs" in client
    assert aws["full"]["outputs"]["GrpcAddress"] == "grpc.fedbus.example.org:50051"
    plain = aws["plain"]["outputs"]
    assert plain["GrpcAddress"] == plain["CoordinatorLoadBalancerDnsName"] + ":50051"
    assert plain["ApiUrl"].startswith("http://") and aws["full"]["outputs"]["ApiUrl"].startswith("https://")
